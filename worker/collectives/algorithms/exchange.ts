import type { ShardRange } from '../../../shared/shard.js';
import { referenceSum } from './schedule.js';

/**
 * The one-hop exchange of small collectives. They are latency-bound: instead of 2(N-1) ring hops,
 * every rank sends its part straight to every other rank and combines the parts locally, sums in
 * `referenceSum`'s order (the ring's), so the result is bit-identical to the ring's.
 */
export const EXCHANGE_MAX_BYTES = 32 << 10;

export interface Exchange {
  /** Element range of the buffer rank r contributes (all-reduce: all of it). */
  contrib(r: number): ShardRange;
  /** Combines the parts once all have arrived; parts[r] is rank r's contribution. */
  finish(parts: Float32Array[]): void;
}

/** All-reduce or reduce-scatter of `buf`: every rank sends all of it; `buf` := the sum (reduce-scatter: unrounded). */
export function sumExchange(buf: Float32Array, kind: 'allReduce' | 'reduceScatter'): Exchange {
  return {
    contrib: () => ({ start: 0, end: buf.length }),
    finish: (parts) => buf.set(referenceSum(parts, 'fp32', kind)),
  };
}

/** All-gather into `out`, rank r's part at `segs[r]`: each rank sends its own part and places the others'. */
export function gatherExchange(out: Float32Array, segs: readonly ShardRange[], rank: number): Exchange {
  return {
    contrib: (r) => segs[r]!,
    finish: (parts) => parts.forEach((p, r) => r !== rank && out.set(p, segs[r]!.start)),
  };
}

/** A barrier: one element per rank, nothing to combine (it ends once every rank's element is here). */
export const barrierExchange: Exchange = { contrib: (r) => ({ start: r, end: r + 1 }), finish: () => undefined };

/** The fields of a part's message that must match this rank's collective. */
export interface PartHeader {
  readonly op: string;
  readonly sender: number;
  readonly total: number;
  readonly wire: string;
  readonly step: number;
  readonly chunk: number;
}

/**
 * Why a message cannot be `h.sender`'s part of this rank's exchange (`kind` on `total` elements,
 * `wire`, the sender's part `wantBytes` long, `twice` when it has arrived already), or null.
 */
export function partProblem(
  h: PartHeader,
  op: { kind: string; total: number; wire: string },
  wantBytes: number,
  payloadBytes: number,
  twice: boolean,
): string | null {
  if (h.op !== op.kind)
    return `rank ${h.sender} sent data of ${h.op}, this rank is running ${op.kind} (collectives called in different orders?)`;
  if (h.total !== op.total) return `rank ${h.sender} runs it on ${h.total} elements, this rank on ${op.total}`;
  if (h.wire !== op.wire) return `rank ${h.sender} sends ${h.wire}, this rank expects ${op.wire}`;
  if (twice) return `rank ${h.sender} sent its part twice`;
  if (h.step !== 0 || h.chunk !== 0 || payloadBytes !== wantBytes)
    return `rank ${h.sender} sent ${payloadBytes} bytes as step ${h.step} chunk ${h.chunk}, expected ${wantBytes} bytes as step 0 chunk 0`;
  return null;
}

/** A received part as fp32 values (the payload's bytes copied: a message can sit at any offset). */
export function partValues(payload: Uint8Array, elems: number): Float32Array {
  const part = new Float32Array(elems);
  new Uint8Array(part.buffer).set(payload);
  return part;
}
