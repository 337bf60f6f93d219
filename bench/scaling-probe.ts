/**
 * A child process of `npm run bench -- scaling`, measuring the two references the data-parallel
 * figures are read against (it only acts when given a job):
 * - `compute`: the tiny model's forward + backward + parameter write-back on one batch, repeated,
 *   in-process (no data feed, no collectives, no reports). Run alone and as two processes at once,
 *   it shows what two cores give two independent copies of the step's work on this machine.
 * - `comm`: one rank of two running exactly the collectives of a 2-worker step through the comm
 *   thread (blocking embedding all-gather, gradient reduce-scatter, 6-float all-reduce, in-place
 *   parameter all-gather), each step entered together: their cost when no rank waits for another.
 * Prints one JSON line: { stepMs } (median over the timed steps).
 */
import * as tf from '@tensorflow/tfjs';
import { loadLabelSet } from '../shared/labels.js';
import { mulberry32 } from '../shared/random/generators.js';
import { shardRanges } from '../shared/shard.js';
import { initBackend } from '../kernels/backend.js';
import { ThreadedProcessGroup } from '../worker/collectives/threaded-group.js';
import { labelPriorTarget } from '../model/label-prior.js';
import { resolveModelConfig } from '../model/config.js';
import { CxrModel, initialParams, modelLayout } from '../model/vit.js';
import { computeGradients, localComm } from '../worker/steps/forward-backward.js';
import { median } from './median.js';

export interface ProbeJob {
  mode: 'compute' | 'comm';
  batch: number;
  imageSize: number;
  steps: number;
  warmup: number;
  /** comm: this rank and both endpoints. */
  rank?: number;
  endpoints?: string[];
}

if (process.argv[2]) await main(JSON.parse(process.argv[2]) as ProbeJob);

async function main(job: ProbeJob): Promise<void> {
  const set = loadLabelSet('chexpert14');
  const L = set.labels.length;
  const cfg = resolveModelConfig({ preset: 'tiny', imageSize: job.imageSize, labels: set.labels });
  const times: number[] = [];
  if (job.mode === 'compute') {
    await initBackend('wasm');
    const params = initialParams(cfg, 0);
    const model = new CxrModel(cfg, params);
    const r = mulberry32(1);
    const images = Uint8Array.from({ length: job.batch * job.imageSize ** 2 }, () => Math.floor(r() * 256));
    const labels = Float32Array.from({ length: job.batch * L }, () => (r() < 0.3 ? 1 : 0));
    const opts = {
      weights: { classification: 1, contrastive: 0.5, labelPrior: 0.1 },
      targets: { uncertainty: set.labels.map(() => 'ignore' as const), blank: 'mask' as const, seed: 0 },
      posWeight: null,
      priorTarget: labelPriorTarget('graph', set.labels, set),
    };
    const indices = Array.from({ length: job.batch }, (_, i) => i);
    const grads = new Float32Array(params.length); // reused across steps, as the train step does
    for (let s = 0; s < job.warmup + job.steps; s++) {
      const t0 = performance.now();
      await computeGradients(model, { n: job.batch, images, labels, indices, epoch: 0 }, localComm, opts, true, grads);
      model.assignFlat(params);
      if (s >= job.warmup) times.push(performance.now() - t0);
    }
    model.dispose();
    tf.disposeVariables();
  } else {
    const rank = job.rank!;
    const P = modelLayout(cfg).total;
    const counts = shardRanges(P, 2).map((s) => s.end - s.start);
    const rowWidth = L + 2 * cfg.embedDim;
    const g = await ThreadedProcessGroup.create({ rank, world: 2, endpoints: job.endpoints!, timeoutMs: 60_000 });
    let grads: Float32Array = new Float32Array(P).fill(1);
    let params: Float32Array = new Float32Array(P).fill(2);
    for (let s = 0; s < job.warmup + job.steps; s++) {
      await g.allReduce(new Float32Array(1)); // enter each step together
      const t0 = performance.now();
      g.allGatherVSync(new Float32Array(job.batch * rowWidth), [job.batch * rowWidth, job.batch * rowWidth]);
      grads = await g.reduceScatter(grads);
      await g.allReduce(new Float32Array(6));
      params = await g.allGatherVInPlace(params, counts);
      if (s >= job.warmup) times.push(performance.now() - t0);
    }
    await g.close();
  }
  process.stdout.write(JSON.stringify({ stepMs: median(times) }) + '\n');
}
