import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { trainOptions } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { createLogger } from '../../shared/util/log.js';
import type { AurocReport } from '../../shared/metrics/auroc.js';
import yargs from 'yargs';

/**
 * The acceptance run (3,000 synthetic images, 64 px, `--model tiny`, 3 epochs, mean test AUROC
 * >= 0.95) takes minutes; this is its CI-sized stand-in: the real tiny preset and the CLI's
 * default training flags on a small synthetic set at 32 px, for a few dozen steps. A regression in
 * the model (readout, init, attention), the losses or the defaults that stops the tiny model from
 * learning the synthetic signs quickly shows up as a mean AUROC below the floor.
 */
const COUNT = 900;
const SIZE = 32;
const STEPS = 40;
/**
 * Measured 0.799 on wasm (docs/results.md, "CI-sized learnability check"; 0.690 with the preset
 * before the spatial readout, per-image input and cosine scale 30); a model that learns nothing
 * scores about 0.5. The floor leaves room for backend rounding, not for a slower learner.
 */
const FLOOR = 0.73;

test(`tiny preset with default flags learns the synthetic signs: mean test AUROC >= ${FLOOR} after ${STEPS} steps`, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-learn-'));
  try {
    const dataDir = path.join(dir, 'data');
    await runSynth(dataDir, false, { count: COUNT, imageSize: SIZE, seed: 0, fractions: { val: 0.05, test: 0.3 } });
    const out = path.join(dir, 'run');
    const args = await trainOptions(yargs([])).parseAsync([
      '--data',
      dataDir,
      '--out',
      out,
      '--steps',
      String(STEPS),
      '--backend',
      'wasm',
      '--bootstrap',
      '0',
      '--no-report',
    ]);
    await trainDistributed(parseTrainConfig(args as never), { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} });
    const e = JSON.parse(await readFile(path.join(out, 'eval.json'), 'utf8')) as AurocReport;
    const per = Object.entries(e.auroc)
      .map(([k, v]) => `${k} ${v === null ? 'null' : (v as number).toFixed(3)}`)
      .join(', ');
    assert.ok(e.mean_auroc !== null && e.mean_auroc >= FLOOR, `mean test AUROC ${e.mean_auroc} < ${FLOOR}: ${per}`);
    // The coarse signs (bright upper mediastinum, wide heart, bright lower zone) are learned first.
    for (const l of ['Cardiomegaly', 'Pleural Effusion']) assert.ok((e.auroc[l] ?? 0) >= 0.75, `${l} AUROC ${e.auroc[l]} < 0.75: ${per}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
