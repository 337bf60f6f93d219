/**
 * How a flat vector of `length` elements is cut among `world` ranks: contiguous ranges in rank
 * order, sizes differing by at most one, the first `length % world` ranks one element longer.
 * Reduce-scatter, the ZeRO-1 optimizer shards and checkpoint shards all use this one rule, so a
 * checkpoint written by N ranks is the concatenation of their shards in rank order.
 */
export interface ShardRange {
  readonly start: number;
  readonly end: number;
}

export function shardRange(length: number, world: number, rank: number): ShardRange {
  if (!Number.isInteger(length) || length < 0) throw new RangeError(`shardRange: length must be a non-negative integer, got ${length}`);
  if (!Number.isInteger(world) || world < 1) throw new RangeError(`shardRange: world must be a positive integer, got ${world}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= world) throw new RangeError(`shardRange: rank ${rank} outside 0..${world - 1}`);
  const base = Math.floor(length / world);
  const extra = length % world;
  const start = rank * base + Math.min(rank, extra);
  return { start, end: start + base + (rank < extra ? 1 : 0) };
}

/** Every rank's range, in rank order. */
export function shardRanges(length: number, world: number): ShardRange[] {
  return Array.from({ length: world }, (_, r) => shardRange(length, world, r));
}
