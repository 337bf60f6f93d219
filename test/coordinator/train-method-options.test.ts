import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { createLogger } from '../../shared/util/log.js';
import { evalSaved } from '../../coordinator/eval/saved-model.js';
import { openTrainData } from '../../coordinator/train/data.js';
import { initialParams, modelLayout } from '../../model/vit.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const log = createLogger('test', 'warn');
const quiet = () => {};

function args(data: string, out: string, workers: number, extra: Partial<TrainArgs> = {}): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers,
    data,
    out,
    steps: 6,
    'batch-size': 16,
    seed: 3,
    eval: 'test',
    backend: 'wasm',
    lr: 3e-3,
    'warmup-steps': 2,
    uncertainty: 'lsr-ones',
    'pos-weight': 'none',
    gpu: false,
    prefetch: 2,
    'params-check-every': 1,
    report: false,
    augment: 'strong',
    'prior-scope': 'all',
    'visual-head': 'transformer',
    ...extra,
  } as TrainArgs;
}

async function params(out: string): Promise<Float32Array> {
  const b = await readFile(path.join(out, 'model.bin'));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

test('--augment strong --prior-scope all --visual-head transformer: 2 workers train the model 1 worker trains, unlike the unaugmented one; evaluation sees the raw test images', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-aug-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 80, imageSize: 16, seed: 4, fractions: { val: 0.1, test: 0.3 } });
    const run = async (name: string, workers: number, extra: Partial<TrainArgs> = {}) => {
      const out = path.join(dir, name);
      const r = await trainDistributed(parseTrainConfig(args(data, out, workers, extra)), { log, progress: false, workerOutput: quiet });
      return { r, out, p: await params(out) };
    };
    const one = await run('w1', 1);
    const two = await run('w2', 2);
    const plain = await run('plain', 1, { augment: 'none' });
    const maxA = one.p.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    const diff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);
    assert.ok(diff(one.p, two.p) <= 1e-4 * maxA, `1 vs 2 workers: max |difference| ${diff(one.p, two.p)} vs max |parameter| ${maxA}`);
    assert.ok(diff(one.p, plain.p) > 1e-3 * maxA, 'augmentation changed what the model was trained on');
    const config = JSON.parse(await readFile(path.join(one.out, 'config.json'), 'utf8'));
    assert.equal(config.augment, 'strong');
    assert.equal(config.priorScope, 'all');
    assert.equal(config.resolved.model.visualHead, 'transformer');
    // The run's test evaluation equals a one-process evaluation of the saved model, which reads the split unaugmented.
    const ev = JSON.parse(await readFile(path.join(two.out, 'eval.json'), 'utf8'));
    const again = await evalSaved(two.r.checkpoint, await openTrainData(data), 'test', 'wasm', { replicates: 0, seed: 3 }, () => {});
    for (const [label, v] of Object.entries(ev.auroc as Record<string, number | null>))
      assert.ok(v === null ? again.auroc[label] === null : Math.abs(again.auroc[label]! - v) < 1e-6, label);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('--freeze visual-blocks:1 --head-lr --lr-layer-decay: frozen parameters bit-identical after training, the rest trained; 2 workers equal 1', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-freeze-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 80, imageSize: 16, seed: 4, fractions: { val: 0.1, test: 0.3 } });
    const extra: Partial<TrainArgs> = {
      augment: 'none',
      eval: 'none',
      freeze: ['visual-blocks:1'],
      'head-lr': 1e-2,
      'lr-layer-decay': 0.8,
    };
    const run = async (name: string, workers: number) => {
      const out = path.join(dir, name);
      await trainDistributed(parseTrainConfig(args(data, out, workers, extra)), { log, progress: false, workerOutput: quiet });
      return { out, p: await params(out) };
    };
    const one = await run('w1', 1);
    const two = await run('w2', 2);
    const config = JSON.parse(await readFile(path.join(one.out, 'config.json'), 'utf8'));
    const layout = modelLayout(config.resolved.model);
    const init = initialParams(config.resolved.model, 3);
    let frozen = 0;
    for (const e of layout.entries) {
      const a = one.p.subarray(e.offset, e.offset + e.size);
      const i = init.subarray(e.offset, e.offset + e.size);
      const isFrozen = /^visual\.(conv1|class_embedding|positional_embedding|ln_pre|transformer\.resblocks\.[0-2]\.)/.test(e.name);
      if (isFrozen) {
        frozen++;
        assert.deepEqual(a, i, `${e.name} is frozen: bit-identical`);
        assert.deepEqual(two.p.subarray(e.offset, e.offset + e.size), i, `${e.name} is frozen on 2 workers too`);
      } else if (e.name !== 'visual.head.resblocks.0.attn.in_proj_bias') assert.notDeepEqual(a, i, `${e.name} trained`);
    }
    assert.ok(frozen > 10);
    const maxA = one.p.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    const diff = one.p.reduce((m, x, i) => Math.max(m, Math.abs(x - two.p[i]!)), 0);
    assert.ok(diff <= 1e-4 * maxA, `1 vs 2 workers: max |difference| ${diff} vs max |parameter| ${maxA}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
