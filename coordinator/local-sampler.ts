import { hashInts, mulberry32 } from '../shared/rng.js';

/**
 * The order of the training split in one epoch: a Fisher-Yates shuffle seeded by (seed, epoch),
 * so any epoch's order can be recomputed without replaying earlier ones (resume, N ranks).
 */
export function epochPermutation(n: number, seed: number, epoch: number): Uint32Array {
  const rand = mulberry32(hashInts(seed, epoch, 0x5eed));
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = p[i]!;
    p[i] = p[j]!;
    p[j] = t;
  }
  return p;
}

/** Dataset indices of global batch `step` (0-based over the run), dropping each epoch's incomplete tail. */
export function globalBatchIndices(n: number, batchSize: number, seed: number, step: number): { epoch: number; indices: number[] } {
  const perEpoch = Math.floor(n / batchSize);
  if (perEpoch === 0) throw new Error(`batch size ${batchSize} exceeds the ${n} training samples`);
  const epoch = Math.floor(step / perEpoch);
  const k = step % perEpoch;
  const perm = epochPermutation(n, seed, epoch);
  return { epoch, indices: Array.from(perm.subarray(k * batchSize, (k + 1) * batchSize)) };
}
