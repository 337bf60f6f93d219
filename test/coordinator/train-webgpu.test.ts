import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed, type TrainJobOptions } from '../../coordinator/train/train-job.js';
import { checkpointsDir, stepDir } from '../../shared/checkpoint/index.js';
import { createLogger } from '../../shared/util/log.js';
import { relativeDifference, webGpuMissing } from '../helpers/webgpu.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

/**
 * The WebGPU acceptance on the software adapter (slow, so small: tiny at 16 px, batch 8):
 * two workers on WebGPU end 20 steps where the same run on wasm ends, and a checkpoint written
 * on wasm continues on WebGPU.
 */
const missing = await webGpuMissing();
// llvmpipe's own threads only contend with the other worker and the test runner on a small machine.
process.env.LP_NUM_THREADS ??= '1';
const log = createLogger('test', 'warn');
const quiet = () => {};

function args(data: string, out: string, backend: TrainArgs['backend'], steps: number): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers: 2,
    data,
    out,
    steps,
    'batch-size': 8,
    seed: 5,
    eval: 'none',
    backend,
    lr: 3e-3,
    'warmup-steps': 2,
    uncertainty: 'lsr-ones',
    'pos-weight': 'none',
    gpu: false,
    prefetch: 2,
    'params-check-every': 0,
    report: false,
    'checkpoint-every': 0,
    'checkpoint-every-minutes': 0,
    'keep-checkpoints': 3,
  } as TrainArgs;
}
const opts = (o: Partial<TrainJobOptions> = {}): TrainJobOptions => ({ log, progress: false, workerOutput: quiet, ...o });
const weights = async (out: string) => {
  const b = await readFile(path.join(out, 'model.bin'));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};

test("2 workers on WebGPU (software adapter): 20 steps end at the wasm run's weights (1e-4 relative); a wasm checkpoint continues on WebGPU", {
  skip: missing ?? false,
}, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-webgpu-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 60, imageSize: 16, seed: 3, fractions: { val: 0.1, test: 0.2 } });
    const wasm = path.join(dir, 'wasm');
    await trainDistributed(
      parseTrainConfig(args(data, wasm, 'wasm', 20)),
      opts({ checkpoints: { checkpointEvery: 18, keepCheckpoints: 3 } }),
    );
    const gpu = path.join(dir, 'webgpu');
    await trainDistributed(parseTrainConfig(args(data, gpu, 'webgpu-software', 20)), opts());
    const d = relativeDifference(await weights(gpu), await weights(wasm));
    assert.ok(d < 1e-4, `WebGPU vs wasm after 20 steps: relative difference ${d}`);

    const resumed = path.join(dir, 'resumed');
    const r = await trainDistributed(
      parseTrainConfig(args(data, resumed, 'webgpu-software', 20)),
      opts({ checkpoints: { resume: stepDir(checkpointsDir(wasm), 18) } }),
    );
    assert.equal(r.startStep, 18);
    const dr = relativeDifference(await weights(resumed), await weights(wasm));
    assert.ok(dr < 1e-4, `wasm to step 18, WebGPU on to 20, vs wasm throughout: relative difference ${dr}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
