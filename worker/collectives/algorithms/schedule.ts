import { shardRange, type ShardRange } from '../../../shared/shard.js';
import { type Wire, quantize } from '../codec.js';

/**
 * The pure part of the collectives: which segment a rank sends and receives at each ring step,
 * how segments are cut into pipelined chunks, and the fixed summation order the ring produces.
 * No sockets here; the process group executes these plans, and the tests run them in memory.
 *
 * Ring numbering (all-reduce): steps g = 0 .. 2N-3. Steps 0 .. N-2 are the reduce-scatter, where
 * the received chunk is added into the local buffer; steps N-1 .. 2N-3 are the all-gather, where it
 * is copied. At every step rank r sends segment (r-g-1) mod N to rank r+1 and receives segment
 * (r-g-2) mod N from rank r-1, so what it receives at step g is what it sends at step g+1, chunk
 * by chunk: chunk c can go on as soon as chunk c has arrived, which is what pipelines the ring.
 * Reduce-scatter runs steps 0 .. N-2, all-gather steps N-1 .. 2N-3 of the same numbering.
 */

export type RingKind = 'allReduce' | 'reduceScatter' | 'allGather';

const mod = (a: number, n: number): number => ((a % n) + n) % n;

export function sendSegment(world: number, rank: number, step: number): number {
  return mod(rank - step - 1, world);
}

export function recvSegment(world: number, rank: number, step: number): number {
  return mod(rank - step - 2, world);
}

/** First and last ring step of each collective, in the all-reduce numbering. */
export function ringSteps(kind: RingKind, world: number): { first: number; last: number } {
  switch (kind) {
    case 'allReduce':
      return { first: 0, last: 2 * world - 3 };
    case 'reduceScatter':
      return { first: 0, last: world - 2 };
    case 'allGather':
      return { first: world - 1, last: 2 * world - 3 };
  }
}

/**
 * Chunks of a segment: contiguous, in order, none longer than `chunkElems`, sizes differing by at
 * most one (cut with `shardRange`, the same rule as the rank shards). Empty segments have no chunk,
 * so nothing is sent for them.
 */
export function chunkRanges(seg: ShardRange, chunkElems: number): ShardRange[] {
  if (!Number.isInteger(chunkElems) || chunkElems < 1) throw new RangeError(`chunkElems must be a positive integer, got ${chunkElems}`);
  const len = seg.end - seg.start;
  const n = Math.ceil(len / chunkElems);
  return Array.from({ length: n }, (_, c) => {
    const r = shardRange(len, n, c);
    return { start: seg.start + r.start, end: seg.start + r.end };
  });
}

/** Segments of a buffer whose rank r part has `counts[r]` elements, in rank order. */
export function segmentsFromCounts(counts: readonly number[]): ShardRange[] {
  let at = 0;
  return counts.map((n) => {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`counts must be non-negative integers, got ${n}`);
    const r = { start: at, end: at + n };
    at += n;
    return r;
  });
}

/** One message of a plan: ring step, chunk index within the segment, element range of the buffer. */
export interface PlanItem {
  readonly step: number;
  readonly chunk: number;
  readonly start: number;
  readonly end: number;
}

export interface PlanRecv extends PlanItem {
  /** 'add': sum into the buffer (reduce-scatter); 'copy': overwrite (all-gather, broadcast). */
  readonly mode: 'add' | 'copy';
  /** Whether the same range goes on to the next rank as step+1, chunk for chunk. */
  readonly forward: boolean;
}

/**
 * What one rank does in one collective: `sends` go out at the start (from its own data), `recvs`
 * arrive from the previous rank in exactly this order (one ZeroMQ pipe is FIFO), and each recv
 * with `forward` is followed by a send of the same range at step+1 to the next rank.
 */
export interface Plan {
  readonly sends: readonly PlanItem[];
  readonly recvs: readonly PlanRecv[];
  /** Rank this rank receives from and sends to (-1 when it does neither). */
  readonly from: number;
  readonly to: number;
}

export function ringPlan(kind: RingKind, world: number, rank: number, segments: readonly ShardRange[], chunkElems: number): Plan {
  if (segments.length !== world) throw new RangeError(`ringPlan: ${segments.length} segments for world ${world}`);
  if (world === 1) return { sends: [], recvs: [], from: -1, to: -1 };
  const { first, last } = ringSteps(kind, world);
  const chunksOf = segments.map((s) => chunkRanges(s, chunkElems));
  const sends = chunksOf[sendSegment(world, rank, first)]!.map((r, chunk) => ({ step: first, chunk, ...r }));
  const recvs: PlanRecv[] = [];
  for (let g = first; g <= last; g++) {
    const mode = g <= world - 2 ? 'add' : 'copy';
    chunksOf[recvSegment(world, rank, g)]!.forEach((r, chunk) => recvs.push({ step: g, chunk, ...r, mode, forward: g < last }));
  }
  return { sends, recvs, from: mod(rank - 1, world), to: mod(rank + 1, world) };
}

/**
 * Broadcast as a pipelined chain root -> root+1 -> ... -> root-1: each rank copies a chunk and
 * passes it on while the next one is still arriving, so the time is about one buffer transfer plus
 * (N-2) chunk transfers, not (N-1) buffer transfers. The step of a message is the sender's
 * position in the chain.
 */
export function broadcastPlan(world: number, rank: number, root: number, length: number, chunkElems: number): Plan {
  if (world === 1) return { sends: [], recvs: [], from: -1, to: -1 };
  const pos = mod(rank - root, world);
  const chunks = chunkRanges({ start: 0, end: length }, chunkElems);
  const from = pos === 0 ? -1 : mod(rank - 1, world);
  const to = pos === world - 1 ? -1 : mod(rank + 1, world);
  if (pos === 0) return { sends: chunks.map((r, chunk) => ({ step: 0, chunk, ...r })), recvs: [], from, to };
  return {
    sends: [],
    recvs: chunks.map((r, chunk) => ({ step: pos - 1, chunk, ...r, mode: 'copy' as const, forward: pos < world - 1 })),
    from,
    to,
  };
}

/**
 * The fixed summation order of segment k: a left fold over ranks k+1, k+2, ..., N-1, 0, ..., k
 * (the ring carries the partial sum from rank k+1 round to its owner, rank k).
 */
export function reductionOrder(world: number, segment: number): number[] {
  return Array.from({ length: world }, (_, i) => mod(segment + 1 + i, world));
}

/**
 * The sum every rank must end with, computed sequentially in the documented order: per segment
 * (shardRange of the length), fold the ranks in `reductionOrder`, rounding to fp32 after every
 * addition and, with a compressed wire, rounding each partial sum to the wire format before it
 * travels; the all-reduce result is the owner's fp32 sum rounded once more to the wire format
 * (that rounded value is what the other ranks receive). Reduce-scatter returns the owner's fp32
 * sum unrounded. `inputs[r]` is rank r's buffer.
 */
export function referenceSum(
  inputs: readonly Float32Array[],
  wire: Wire = 'fp32',
  kind: 'allReduce' | 'reduceScatter' = 'allReduce',
): Float32Array {
  const world = inputs.length;
  const length = inputs[0]?.length ?? 0;
  const out = new Float32Array(length);
  if (world === 1) {
    out.set(inputs[0]!);
    return out;
  }
  const acc = new Float32Array(1);
  const q = new Float32Array(1);
  for (let k = 0; k < world; k++) {
    const { start, end } = shardRange(length, world, k);
    const order = reductionOrder(world, k);
    for (let i = start; i < end; i++) {
      q[0] = inputs[order[0]!]![i]!;
      quantize(q, wire);
      acc[0] = q[0];
      for (let j = 1; j < world; j++) {
        acc[0] = acc[0]! + inputs[order[j]!]![i]!;
        if (j < world - 1) quantize(acc, wire);
      }
      if (kind === 'allReduce') quantize(acc, wire);
      out[i] = acc[0]!;
    }
  }
  return out;
}
