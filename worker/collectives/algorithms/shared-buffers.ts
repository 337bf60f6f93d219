import type { ShardRange } from '../../../shared/shard.js';
import { reductionOrder } from './schedule.js';

/**
 * The fp32 all-reduce through regions every rank on the host maps (transport/shm.ts,
 * `ShmRegion`; docs/collectives.md, "Shared buffers"). Segment k (shardRange of the length) is
 * cut into blocks of the region's size; per round, every rank copies block r of every segment
 * into its inputs, owner k folds block r of segment k over all ranks' inputs in
 * `reductionOrder(N, k)` (the ring's order, so the ring's bits) into its result, and every rank
 * copies every result out. Two barriers per round order it; rounds alternate between two halves of
 * the regions, so a round's inputs never overwrite what a slower rank is still reading: before
 * writing round g a rank has seen every rank finish reading round g-2 (that rank's inputs barrier
 * of round g-1 comes after its copy-out of g-2).
 *
 * A region's half holds N input blocks then one result block: [inputs for owner 0 .. N-1 | result].
 */

/** Rounds of an all-reduce cut into `segs` (the first segment is the longest) with blocks of `blockElems`. */
export function sharedRounds(segs: readonly ShardRange[], blockElems: number): number {
  return Math.ceil((segs[0]!.end - segs[0]!.start) / blockElems);
}

/** Block r of segment k: its element range in the buffer (empty past the segment's end). */
export function blockOf(segs: readonly ShardRange[], blockElems: number, k: number, r: number): ShardRange {
  const start = segs[k]!.start + r * blockElems;
  return { start, end: Math.max(start, Math.min(segs[k]!.end, start + blockElems)) };
}

/** What one rank's all-reduce runs on; the process group provides it. */
export interface SharedBuffers {
  readonly rank: number;
  readonly world: number;
  readonly blockElems: number;
  /** Every rank's region, mapped (own included), as floats. */
  readonly regions: readonly (Float32Array | null)[];
  /** dst := ((inputs[0] + inputs[1]) + ...) in fp32, in this order. */
  sum(dst: Float32Array, inputs: Float32Array[]): void;
  /** The group can still run this all-reduce (not closed, not aborted, regions still on). */
  live(): boolean;
  /** Rounds run through the regions so far (then one more): which half this round uses. */
  nextRound(): number;
  /** Barrier i (0 .. 2 rounds - 1) of this all-reduce; rejects with the reason when it fails. */
  barrier(i: number): Promise<void>;
}

export async function sharedAllReduce(buf: Float32Array, segs: readonly ShardRange[], g: SharedBuffers): Promise<void> {
  const n = g.world;
  const block = g.blockElems;
  const half = (n + 1) * block;
  const order = reductionOrder(n, g.rank);
  const rounds = sharedRounds(segs, block);
  for (let r = 0; r < rounds; r++) {
    if (!g.live()) return g.barrier(2 * r); // rejects with the reason
    const h = (g.nextRound() % 2) * half;
    const mine = g.regions[g.rank]!;
    for (let k = 0; k < n; k++) {
      const { start, end } = blockOf(segs, block, k, r);
      if (end > start) mine.set(buf.subarray(start, end), h + k * block);
    }
    await g.barrier(2 * r);
    const ownBlock = blockOf(segs, block, g.rank, r);
    const len = ownBlock.end - ownBlock.start;
    if (len > 0) {
      const inputs = order.map((k) => g.regions[k]!.subarray(h + g.rank * block, h + g.rank * block + len));
      g.sum(mine.subarray(h + n * block, h + n * block + len), inputs);
    }
    await g.barrier(2 * r + 1);
    for (let k = 0; k < n; k++) {
      const { start, end } = blockOf(segs, block, k, r);
      if (end > start) buf.set(g.regions[k]!.subarray(h + n * block, h + n * block + (end - start)), start);
    }
  }
}
