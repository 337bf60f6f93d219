import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed, type TrainJobOptions } from '../../coordinator/train/train-job.js';
import { checkpointsDir, loadCheckpoint, readManifest, stepDir } from '../../shared/checkpoint/index.js';
import { createLogger } from '../../shared/util/log.js';
import { initialParams, modelLayout } from '../../model/vit.js';
import type { ParamLayout } from '../../shared/params.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const log = createLogger('test', 'warn');
const quiet = () => {};

function args(data: string, out: string, workers: number, freeze: string[]): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers,
    data,
    out,
    steps: 6,
    'batch-size': 16,
    seed: 3,
    eval: 'none',
    backend: 'wasm',
    lr: 3e-3,
    'warmup-steps': 2,
    uncertainty: 'lsr-ones',
    'pos-weight': 'none',
    gpu: false,
    prefetch: 2,
    'params-check-every': 1,
    report: false,
    'checkpoint-every': 0,
    'checkpoint-every-minutes': 0,
    'keep-checkpoints': 3,
    freeze,
  } as TrainArgs;
}
const opts = (checkpoints: TrainJobOptions['checkpoints']): TrainJobOptions => ({ log, progress: false, workerOutput: quiet, checkpoints });

async function params(out: string): Promise<Float32Array> {
  const b = await readFile(path.join(out, 'model.bin'));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}
const maxAbs = (a: Float32Array) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);

/** Byte lengths of the params and m sections of each shard of a checkpoint, from the shard headers. */
async function sectionBytes(dir: string): Promise<{ params: number; m: number; v: number }[]> {
  const manifest = await readManifest(dir);
  return manifest.shards.map((s) => {
    const b = Buffer.alloc(128);
    const fd = openSync(path.join(dir, s.file), 'r');
    readSync(fd, b, 0, 128, 0);
    closeSync(fd);
    return { params: Number(b.readBigUInt64LE(88)), m: Number(b.readBigUInt64LE(96)), v: Number(b.readBigUInt64LE(104)) };
  });
}

const isVisualTower = (name: string) => name.startsWith('visual.') && !name.startsWith('visual.head.');

test('--freeze visual: the moments cover the trainable entries only (checkpoint shards smaller by the frozen count); 1 and 2 workers train the same weights; resume is exact, also across worker counts and another --freeze', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-freeze-optim-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 80, imageSize: 16, seed: 4, fractions: { val: 0.1, test: 0.3 } });
    const train = async (name: string, workers: number, freeze: string[], o: TrainJobOptions['checkpoints'] = {}) => {
      const out = path.join(dir, name);
      const r = await trainDistributed(parseTrainConfig(args(data, out, workers, freeze)), opts(o));
      return { r, out, p: await params(out) };
    };
    const one = await train('w1', 1, ['visual']);
    const two = await train('w2', 2, ['visual'], { checkpointEvery: 3 });
    const plain = await train('plain', 2, [], { checkpointEvery: 3 });

    const config = JSON.parse(await readFile(path.join(one.out, 'config.json'), 'utf8'));
    const layout: ParamLayout = modelLayout(config.resolved.model);
    const init = initialParams(config.resolved.model, 3);
    const frozen = layout.entries.filter((e) => isVisualTower(e.name));
    const frozenCount = frozen.reduce((a, e) => a + e.size, 0);
    assert.ok(frozenCount > layout.total / 2, `the image tower is most of the model (${frozenCount} of ${layout.total})`);
    for (const e of layout.entries) {
      const at = (p: Float32Array) => p.subarray(e.offset, e.offset + e.size);
      if (isVisualTower(e.name)) {
        assert.deepEqual(at(one.p), at(init), `${e.name} is frozen: bit-identical`);
        assert.deepEqual(at(two.p), at(init), `${e.name} is frozen on 2 workers too`);
      }
    }
    assert.ok(maxDiff(one.p, init) > 0, 'the rest trained');
    const tol = 1e-5 * maxAbs(one.p);
    assert.ok(maxDiff(one.p, two.p) <= tol, `1 vs 2 workers: max |difference| ${maxDiff(one.p, two.p)} vs ${tol}`);

    // The checkpoint: every parameter, the moments of the trainable ones only.
    const at3 = stepDir(checkpointsDir(two.out), 3);
    const manifest = await readManifest(at3);
    assert.deepEqual(
      manifest.frozen,
      frozen.map((e) => e.name),
    );
    const packed = await sectionBytes(at3);
    const full = await sectionBytes(stepDir(checkpointsDir(plain.out), 3));
    const sum = (xs: { params: number; m: number; v: number }[], k: 'params' | 'm' | 'v') => xs.reduce((a, x) => a + x[k], 0);
    assert.equal(sum(packed, 'params'), layout.total * 4);
    assert.equal(sum(full, 'm'), layout.total * 4);
    assert.equal(sum(packed, 'm'), sum(full, 'm') - frozenCount * 4, 'm shrinks by the frozen count');
    assert.equal(sum(packed, 'v'), sum(full, 'v') - frozenCount * 4, 'v shrinks by the frozen count');
    assert.ok(Math.abs(packed[0]!.m - packed[1]!.m) <= 4, 'the packed moments are split evenly between the ranks');

    // Resume with the same flags: bit-identical to the run that went straight through.
    const same = await train('same', 2, ['visual'], { resume: at3 });
    assert.equal(same.r.startStep, 3);
    assert.deepEqual(await readFile(path.join(same.out, 'model.bin')), await readFile(path.join(two.out, 'model.bin')));
    // With another worker count: the packed moments are resharded.
    const narrower = await train('narrower', 1, ['visual'], { resume: at3 });
    assert.ok(maxDiff(narrower.p, two.p) <= tol, `2 -> 1 workers: max |difference| ${maxDiff(narrower.p, two.p)} vs ${tol}`);

    // Another --freeze: the last block and what follows train from here with fresh (zero) moments, the rest stays frozen.
    const thaw = await train('thaw', 2, ['visual-blocks:1'], { resume: at3 });
    const last = layout.entries.filter((e) => /^visual\.transformer\.resblocks\.\d+\./.test(e.name)).at(-1)!;
    assert.notDeepEqual(thaw.p.subarray(last.offset, last.offset + last.size), init.subarray(last.offset, last.offset + last.size));
    const conv = layout.entries.find((e) => e.name === 'visual.conv1.weight')!;
    assert.deepEqual(thaw.p.subarray(conv.offset, conv.offset + conv.size), init.subarray(conv.offset, conv.offset + conv.size));
    assert.deepEqual((await readManifest(stepDir(checkpointsDir(thaw.out), 6))).frozen?.includes(last.name), false);

    // A checkpoint with every entry's moments (a run without --freeze) resumes with --freeze visual: the tower stays as saved.
    const plain3 = stepDir(checkpointsDir(plain.out), 3);
    const late = await train('late', 2, ['visual'], { resume: plain3 });
    const saved = (await loadCheckpoint(plain3, { layout, world: 1, rank: 0, moments: false })).params;
    for (const e of frozen)
      assert.deepEqual(late.p.subarray(e.offset, e.offset + e.size), saved.subarray(e.offset, e.offset + e.size), `${e.name} as saved`);
    assert.ok(maxDiff(late.p, saved) > 0, 'the rest trained on');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
