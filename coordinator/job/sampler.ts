import { Xoshiro128 } from '../../shared/random/generators.js';
import { shardRange } from '../../shared/shard.js';

/**
 * The training sampler: which rows of the training split each rank trains on at each step.
 *
 * - Every epoch is a fresh uniform permutation of 0..size-1, drawn by Fisher-Yates from a PRNG
 *   seeded with (seed, epoch). The permutation depends on nothing else, so a run resumed at
 *   (epoch, step) needs no saved RNG state and reproduces the interrupted run's order exactly.
 * - The permutation is cut into consecutive global batches of `globalBatch` rows. With
 *   `dropLast` (the default) the last `size % globalBatch` rows of each epoch's permutation are not
 *   trained on in that epoch; every step then has the same global batch size, which the exact
 *   data-parallel loss scaling assumes. Since each epoch permutes afresh, a row dropped in one
 *   epoch is trained on in others. Without `dropLast` the epoch ends with one smaller batch.
 * - Each global batch is cut into per-rank slices in rank order with `shardRange` (contiguous,
 *   sizes differing by at most one). The global batch order depends only on (seed, size,
 *   globalBatch, dropLast), never on the number of workers: 1 worker with batch N*b sees exactly
 *   the rows that N workers with batch b see, in the same order.
 *
 * PRNG: xoshiro128** seeded by (seed, epoch) (shared/random/generators.ts), so the shuffle is
 * unbiased. Math.random is never used.
 */

export interface SamplerConfig {
  /** Rows in the training split. */
  readonly size: number;
  /** Rows per global batch (all ranks together). */
  readonly globalBatch: number;
  /** Any integer in 0..2^32-1. */
  readonly seed: number;
  /** Drop each epoch's incomplete last batch (default true). */
  readonly dropLast?: boolean;
}

/** A position in the stream of steps: the next step to run is `step` of `epoch`. */
export interface SamplerPosition {
  readonly epoch: number;
  /** Step within the epoch, 0-based. */
  readonly step: number;
}

export function validateSamplerConfig(c: SamplerConfig): void {
  if (!Number.isInteger(c.size) || c.size < 1)
    throw new RangeError(`sampler: the training split must have at least one row, got ${c.size}`);
  if (!Number.isInteger(c.globalBatch) || c.globalBatch < 1)
    throw new RangeError(`sampler: global batch must be a positive integer, got ${c.globalBatch}`);
  if (!Number.isInteger(c.seed) || c.seed < 0 || c.seed > 0xffffffff)
    throw new RangeError(`sampler: seed must be an integer in 0..4294967295, got ${c.seed}`);
  if ((c.dropLast ?? true) && c.globalBatch > c.size)
    throw new RangeError(
      `sampler: global batch ${c.globalBatch} is larger than the training split (${c.size} rows), so with drop_last no batch is ever complete`,
    );
}

export function stepsPerEpoch(c: SamplerConfig): number {
  return (c.dropLast ?? true) ? Math.floor(c.size / c.globalBatch) : Math.ceil(c.size / c.globalBatch);
}

/** The permutation of 0..size-1 for one epoch. */
export function epochPermutation(seed: number, epoch: number, size: number): Uint32Array {
  const rng = new Xoshiro128(seed, epoch);
  const p = new Uint32Array(size);
  for (let i = 0; i < size; i++) p[i] = i;
  for (let i = size - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = p[i]!;
    p[i] = p[j]!;
    p[j] = t;
  }
  return p;
}

/**
 * Global batches and rank slices for a fixed config. Keeps the current epoch's permutation
 * (4 bytes per row) so consecutive steps cost a subarray each.
 */
export class Sampler {
  readonly config: Required<SamplerConfig>;
  readonly stepsPerEpoch: number;
  private cachedEpoch = -1;
  private perm: Uint32Array = new Uint32Array(0);

  constructor(config: SamplerConfig) {
    validateSamplerConfig(config);
    this.config = { ...config, dropLast: config.dropLast ?? true };
    this.stepsPerEpoch = stepsPerEpoch(this.config);
  }

  /** Row indices of the global batch at a position, in order. */
  globalBatch(pos: SamplerPosition): Uint32Array {
    this.check(pos);
    if (pos.epoch !== this.cachedEpoch) {
      this.perm = epochPermutation(this.config.seed, pos.epoch, this.config.size);
      this.cachedEpoch = pos.epoch;
    }
    const start = pos.step * this.config.globalBatch;
    return this.perm.subarray(start, Math.min(start + this.config.globalBatch, this.config.size));
  }

  /** Rank `rank`'s slice (of `world`) of the global batch at a position. */
  rankSlice(pos: SamplerPosition, world: number, rank: number): Uint32Array {
    const batch = this.globalBatch(pos);
    const r = shardRange(batch.length, world, rank);
    return batch.subarray(r.start, r.end);
  }

  /** The position after `pos`. */
  next(pos: SamplerPosition): SamplerPosition {
    this.check(pos);
    return pos.step + 1 < this.stepsPerEpoch ? { epoch: pos.epoch, step: pos.step + 1 } : { epoch: pos.epoch + 1, step: 0 };
  }

  /** The position `globalStep` steps after (0, 0). */
  positionAt(globalStep: number): SamplerPosition {
    if (!Number.isInteger(globalStep) || globalStep < 0)
      throw new RangeError(`sampler: global step must be a non-negative integer, got ${globalStep}`);
    return { epoch: Math.floor(globalStep / this.stepsPerEpoch), step: globalStep % this.stepsPerEpoch };
  }

  /** Steps from (0, 0) to `pos`. */
  globalStep(pos: SamplerPosition): number {
    this.check(pos);
    return pos.epoch * this.stepsPerEpoch + pos.step;
  }

  private check(pos: SamplerPosition): void {
    if (!Number.isInteger(pos.epoch) || pos.epoch < 0 || !Number.isInteger(pos.step) || pos.step < 0 || pos.step >= this.stepsPerEpoch)
      throw new RangeError(`sampler: position epoch ${pos.epoch} step ${pos.step} is outside 0..${this.stepsPerEpoch - 1} steps per epoch`);
  }
}
