import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { runSynth } from '../coordinator/data/synth-run.js';
import { openDataset } from '../shared/dataset/reader.js';
import { decodeBatch } from '../shared/dataset/wire.js';
import { datasetRowSource } from '../coordinator/data/dataset-source.js';
import { Sampler } from '../coordinator/job/sampler.js';
import { runJob } from '../coordinator/job/run-job.js';
import type { StepSummary } from '../coordinator/job/control-server.js';
import { createLogger } from '../shared/util/log.js';
import { augmentPolicy, type AugmentPolicy } from '../shared/augment/policy.js';
import { augmentImages } from '../shared/augment/warp.js';
import { median } from './median.js';

/**
 * `npm run bench -- feed`: the data plane on real worker processes, real gRPC and ZeroMQ.
 *
 * 1. Feed throughput: N workers run the `checksum` step (no compute), so the step loop asks for
 *    batches as fast as the coordinator can read, encode and send them. Reference: the same slices
 *    read, encoded and decoded in one process with no transport, measured in the same run.
 * 2. Data wait under load: the step holds each worker's main thread for --compute-ms (a stand-in
 *    for a training step: `--compute spin` burns the CPU as a CPU backend does, `block` waits
 *    without it as a rank waiting for its GPU does); reported is the share of step time spent waiting for data (the goal of
 *    the scaling issue is under 2%), next to the step's compute time. Then the same with every
 *    slice augmented (--augment, default strong; a worker thread decodes and augments it while the
 *    step computes), next to the time one slice's augmentation takes on one thread.
 */
export async function run(argv: string[]): Promise<void> {
  const a = await yargs(argv)
    .option('images', { type: 'number', default: 4096, describe: 'synthetic training images' })
    .option('size', { type: 'number', default: 64, describe: 'image side' })
    .option('workers', { type: 'number', default: 2 })
    .option('batch', { type: 'number', default: 32, describe: 'rows per worker per step' })
    .option('prefetch', { type: 'number', default: 2 })
    .option('compute-ms', { type: 'number', default: 100, describe: 'simulated compute per step in part 2' })
    .option('compute', {
      choices: ['spin', 'block'] as const,
      default: 'spin' as const,
      describe: "part 2's stand-in: spin the CPU (a CPU backend) or block without it (waiting for a GPU)",
    })
    .option('steps', { type: 'number', default: 40, describe: 'steps in part 2' })
    .option('augment', { choices: ['none', 'light', 'strong'] as const, default: 'strong' as const, describe: 'augmentation in part 2b' })
    .strict()
    .parseAsync();
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-bench-feed-'));
  const log = createLogger('bench', 'warn');
  try {
    const data = path.join(dir, 'data');
    const count = Math.ceil(a.images / 0.8) + 1;
    await runSynth(data, false, { count, imageSize: a.size, seed: 1, fractions: { val: 0.1, test: 0.1 } });
    const ds = await openDataset(data);
    const source = datasetRowSource(ds);
    const globalBatch = a.batch * a.workers;
    const sampler = new Sampler({ size: source.size, globalBatch, seed: 0 });
    const steps = sampler.stepsPerEpoch;
    const mb = (source.size * a.size * a.size) / 2 ** 20;
    process.stdout.write(
      `feed benchmark: ${source.size} training images of ${a.size}x${a.size} (${mb.toFixed(1)} MiB of pixels), ${a.workers} workers x batch ${a.batch}, prefetch ${a.prefetch}\n` +
        `(2-core machine shared with other jobs: figures are noisy)\n\n`,
    );

    // Reference: read + encode + decode of every slice of one epoch, one process, no transport.
    const t = performance.now();
    let rows = 0;
    for (let s = 0; s < steps; s++)
      for (let r = 0; r < a.workers; r++)
        rows += decodeBatch(await source.encode(sampler.rankSlice(sampler.positionAt(s), a.workers, r))).n;
    const refRate = rows / ((performance.now() - t) / 1000);

    const feedRun = async (options: Record<string, number>, n: number, augment: AugmentPolicy | null = null) => {
      const summaries: StepSummary[] = [];
      const at: number[] = [];
      await runJob({
        workers: a.workers,
        step: { name: 'checksum', options },
        source,
        seed: 0,
        globalBatch,
        steps: n,
        prefetch: a.prefetch,
        augment,
        log,
        workerOutput: () => {},
        onStep: (s) => {
          summaries.push(s);
          at.push(performance.now());
        },
      });
      // From the first step's completion to the last's: start-up, the first batch's latency and shutdown are excluded.
      return { seconds: (at.at(-1)! - at[0]!) / 1000, timed: n - 1, summaries };
    };
    // Part 1: one epoch as fast as the feed goes.
    const fast = await feedRun({}, steps);
    const feedRate = (fast.timed * globalBatch) / fast.seconds;
    process.stdout.write(
      `1. feed throughput, images/s delivered and decoded across ${a.workers} workers: ${feedRate.toFixed(0)}` +
        `   (reference, read+encode+decode in one process without transport: ${refRate.toFixed(0)}; ratio ${(feedRate / refRate).toFixed(2)})\n`,
    );

    // Part 2: a compute-bound step; how much of it is spent waiting for data?
    const n = Math.min(a.steps, steps);
    const underLoad = async (label: string, augment: AugmentPolicy | null) => {
      const slow = await feedRun(a.compute === 'spin' ? { spinMs: a['compute-ms'] } : { blockMs: a['compute-ms'] }, n, augment);
      const steady = slow.summaries.slice(2);
      const sum = (f: (s: StepSummary) => number) => steady.reduce((x, s) => x + f(s), 0);
      // Per rank, then the worst rank: the step waits for the slowest.
      const waitShare = Math.max(
        ...Array.from(
          { length: a.workers },
          (_, r) => sum((s) => s.reports[r]!.timings.dataWait) / sum((s) => s.reports[r]!.timings.total),
        ),
      );
      const perStep = slow.seconds / slow.timed;
      const meanTotal = sum((s) => Math.max(...s.reports.map((x) => x.timings.total))) / steady.length;
      const meanDecode = sum((s) => Math.max(...s.reports.map((x) => x.counters.decode_seconds!))) / steady.length;
      const meanAck = sum((s) => Math.max(...s.reports.map((x) => x.counters.ack_wait_seconds!))) / steady.length;
      const meanCompute = sum((s) => Math.max(...s.reports.map((x) => x.timings.compute))) / steady.length;
      process.stdout.write(
        `${label} data wait with ${a['compute-ms']} ms of ${a.compute === 'spin' ? 'compute' : 'blocked wait (no CPU)'} per step (steps 3..${n}): ${(waitShare * 100).toFixed(2)}% of step time on the worst rank` +
          `   (goal < 2%)\n` +
          `   time between step completions ${(perStep * 1000).toFixed(1)} ms; inside the worker loop ${(meanTotal * 1000).toFixed(1)} ms, of it in the step ${(meanCompute * 1000).toFixed(1)} ms, decoding on the main thread ${(meanDecode * 1000).toFixed(2)} ms, waiting for the previous report's ack ${(meanAck * 1000).toFixed(2)} ms` +
          ` (reference: ${a['compute-ms']} ms of compute alone)\n`,
      );
    };
    await underLoad('2a.', null);
    const policy = augmentPolicy(a.augment);
    if (policy) {
      // Reference: one slice augmented on this thread, as the worker's augmentation thread does it.
      const slice = decodeBatch(await source.encode(sampler.rankSlice(sampler.positionAt(0), a.workers, 0)));
      const idx = Array.from(sampler.rankSlice(sampler.positionAt(0), a.workers, 0));
      const times: number[] = [];
      for (let k = 0; k < 9; k++) {
        const t1 = performance.now();
        augmentImages(slice.images, slice.n, a.size, policy, 0, k, idx);
        times.push(performance.now() - t1);
      }
      process.stdout.write(
        `   --augment ${a.augment}: one slice of ${slice.n} images augmented on one thread in ${median(times).toFixed(2)} ms (median of 9)\n`,
      );
      await underLoad(`2b. --augment ${a.augment}:`, policy);
    }
    await ds.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
