import type { SampleBatch } from '../../shared/dataset/reader.js';
import { paramsSha256 } from '../../shared/params-hash.js';
import { batchChecksum } from '../../shared/batch-checksum.js';
import type { StepContext, StepInfo, StepResult, WorkerStep } from './api.js';

/**
 * The `checksum` step: a deterministic stand-in for training that proves the whole data path.
 * Per slice it reports the exact sums of shared/batch-checksum.ts, which the coordinator
 * recomputes from the dataset for the whole global batch (`coordinator probe`). Its
 * "parameters" are a fixed vector derived from the seed, so the parameter-hash checks run too.
 *
 * Options (fault injection, to exercise the failure paths end to end):
 * - `delayMs`: sleep this long per step (a slow worker: fills its prefetch queue).
 * - `spinMs`: hold the main thread this long per step, as a synchronous compute kernel does.
 * - `blockMs`: block the main thread this long per step without using the CPU, as a synchronous
 *   wait for an accelerator does.
 * - `failRank`, `failAtStep`: that rank throws at that step (-1: while the step is being created).
 * - `divergeRank`, `divergeAtStep`: that rank's parameters change after that step (-1: from the start).
 */
export async function createChecksumStep(ctx: StepContext): Promise<WorkerStep> {
  const o = ctx.config.job.step.options as Partial<
    Record<'delayMs' | 'spinMs' | 'blockMs' | 'failRank' | 'failAtStep' | 'divergeRank' | 'divergeAtStep', number>
  >;
  const mine = (r: number | undefined) => r === ctx.rank;
  if (mine(o.failRank) && o.failAtStep === -1) throw new Error(`checksum step: injected start-up failure on rank ${ctx.rank}`);
  const params = new Float32Array(1024);
  for (let i = 0; i < params.length; i++) params[i] = (Math.imul(ctx.config.job.seed ^ 0x5bd1e995, i + 1) >>> 0) / 2 ** 32;
  if (mine(o.divergeRank) && o.divergeAtStep === -1) params[0]! += 1;
  return {
    async run(b: SampleBatch, info: StepInfo): Promise<StepResult> {
      const t0 = performance.now();
      if (mine(o.failRank) && o.failAtStep === info.step)
        throw new Error(`checksum step: injected failure on rank ${ctx.rank} at step ${info.step}`);
      const counters = batchChecksum(b, info.indices);
      if (o.delayMs) await new Promise((r) => setTimeout(r, o.delayMs));
      if (o.spinMs) for (const end = performance.now() + o.spinMs; performance.now() < end; );
      if (o.blockMs) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, o.blockMs);
      if (mine(o.divergeRank) && o.divergeAtStep === info.step) params[1]! += 1;
      return {
        images: b.n,
        counters,
        timings: { compute: (performance.now() - t0) / 1000 },
      };
    },
    paramsHash: () => paramsSha256(params),
  };
}
