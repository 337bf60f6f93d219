import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { loadParams } from '../../model/params-file.js';
import { textTowerSpecs } from '../../model/text/tower.js';
import { createLogger } from '../../shared/util/log.js';
import { addPretrainedText } from '../helpers/pretrained-text.js';
import { torchReference } from '../helpers/torch.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const opts = { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} };

function args(data: string, out: string, pretrained: string, workers: number, textTower: 'frozen' | 'finetune'): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers,
    data,
    out,
    steps: 20,
    'batch-size': 8,
    seed: 4,
    eval: 'none',
    backend: 'wasm',
    lr: 1e-3,
    'warmup-steps': 2,
    uncertainty: 'ignore',
    'pos-weight': 'none',
    gpu: false,
    prefetch: 2,
    'params-check-every': 1,
    report: false,
    'checkpoint-every': 0,
    'checkpoint-every-minutes': 0,
    'keep-checkpoints': 3,
    pretrained,
    'text-tower': textTower,
  } as TrainArgs;
}

test('--pretrained DIR with its CLIP text tower: 20 steps frozen and finetune, 1 and 2 workers give the same weights (1e-5 relative)', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-text-tower-'));
  try {
    // The real layout: open_clip_config.json, a torch.save .bin with both towers, tokenizer files.
    const pre = path.join(dir, 'openai');
    const vision = torchReference('pretrained_vision.py', [pre, 'openai']);
    if ('skip' in vision) return t.skip(vision.skip);
    const text = addPretrainedText(pre, 'clip');
    if ('skip' in text) return t.skip(text.skip);
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 60, imageSize: 32, seed: 3, fractions: { val: 0.1, test: 0.2 } });
    for (const mode of ['frozen', 'finetune'] as const) {
      const runs = [];
      for (const workers of [1, 2]) {
        const out = path.join(dir, `${mode}-${workers}`);
        await trainDistributed(parseTrainConfig(args(data, out, pre, workers, mode)), opts);
        runs.push(await loadParams(out));
      }
      const [a, b] = runs as [Awaited<ReturnType<typeof loadParams>>, Awaited<ReturnType<typeof loadParams>>];
      const cfg = a.doc.config;
      assert.equal(cfg.text.kind, mode === 'frozen' ? 'frozen' : 'tower');
      const tower = cfg.text.kind === 'frozen' || cfg.text.kind === 'tower' ? cfg.text.tower : null;
      assert.equal(tower?.kind, 'clip');
      const towerNames = textTowerSpecs(tower!).map((s) => s.name);
      const inLayout = a.layout.entries.filter((e) => towerNames.includes(e.name));
      // frozen: the prompts are fixed vectors stored with the model; finetune: the tower is trained.
      if (mode === 'frozen') {
        assert.equal(inLayout.length, 0);
        assert.equal(a.doc.fixedPrompts?.length, 42 * 16);
      } else assert.equal(inLayout.length, towerNames.length);
      const maxA = a.params.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      let maxDiff = 0;
      for (let i = 0; i < a.params.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a.params[i]! - b.params[i]!));
      t.diagnostic(`${mode}: max |1 worker - 2 workers| ${maxDiff.toExponential(2)} of max |parameter| ${maxA.toFixed(3)}`);
      assert.ok(maxDiff <= 1e-5 * maxA, `${mode}: ${maxDiff} vs ${maxA}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
