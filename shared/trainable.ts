import { buildLayout, type ParamLayout } from './params.js';
import type { ShardRange } from './shard.js';

/**
 * The trainable part of the flat parameter vector, packed (PyTorch's requires_grad=False under
 * DDP): the layout entries that train, end to end in layout order. With `--freeze` the gradient
 * the ranks reduce and AdamW's moments (the ZeRO-1 shards, a checkpoint's m and v) live in this
 * packed vector, so frozen parameters cost no traffic and no optimizer state; the parameters
 * themselves stay whole. Every rank derives the same packing from the layout and the flags.
 */
export interface Packing {
  /** Elements of the whole flat vector. */
  readonly total: number;
  /** Elements of the packed vector. */
  readonly size: number;
  /** Maximal runs of trainable elements in flat order: flat [start, end) is packed [at, at + end - start). */
  readonly runs: readonly PackedRun[];
  /** The trainable entries as a layout of their own (packed offsets; names, shapes and decay kept). */
  readonly layout: ParamLayout;
  /** Names of the entries left out, in layout order. */
  readonly frozen: readonly string[];
}

export interface PackedRun {
  readonly start: number;
  readonly end: number;
  readonly at: number;
}

/** The packing that leaves out the entries `frozen` names (each must be one of the layout's). */
export function packing(layout: ParamLayout, frozen: readonly string[]): Packing {
  const out = new Set(frozen);
  for (const name of out)
    if (!layout.entries.some((e) => e.name === name)) throw new Error(`packing: no parameter '${name}' in the layout`);
  const runs: { start: number; end: number; at: number }[] = [];
  let at = 0;
  for (const e of layout.entries) {
    if (out.has(e.name) || e.size === 0) continue;
    const last = runs.at(-1);
    if (last && last.end === e.offset) last.end += e.size;
    else runs.push({ start: e.offset, end: e.offset + e.size, at });
    at += e.size;
  }
  return {
    total: layout.total,
    size: at,
    runs,
    layout: buildLayout(layout.entries.filter((e) => !out.has(e.name))),
    frozen: layout.entries.filter((e) => out.has(e.name)).map((e) => e.name),
  };
}

/** The trainable elements of `flat`, packed (into `out` when given). */
export function pack(p: Packing, flat: Float32Array, out = new Float32Array(p.size)): Float32Array {
  if (flat.length !== p.total || out.length !== p.size)
    throw new Error(`pack: ${flat.length} -> ${out.length} for a packing of ${p.total} -> ${p.size}`);
  for (const r of p.runs) out.set(flat.subarray(r.start, r.end), r.at);
  return out;
}

/** Write a packed vector back over the trainable elements of `flat`; frozen ones are left as they are. */
export function unpack(p: Packing, packed: Float32Array, flat: Float32Array): void {
  if (flat.length !== p.total || packed.length !== p.size)
    throw new Error(`unpack: ${packed.length} -> ${flat.length} for a packing of ${p.size} -> ${p.total}`);
  for (const r of p.runs) flat.set(packed.subarray(r.at, r.at + r.end - r.start), r.start);
}

/** A copy from one packed vector into a range of another: n elements from `from` to `to` (offset in the range). */
export interface Piece {
  readonly from: number;
  readonly to: number;
  readonly n: number;
}

/**
 * What of packed range `range` of `to` another packing `from` of the same layout holds, as copies
 * out of `from`'s packed vector (in order, adjacent ones merged). The elements no piece covers
 * are entries `from` left out (for moments: they start at zero).
 */
export function carryOver(from: Packing, to: Packing, range: ShardRange): Piece[] {
  if (from.total !== to.total) throw new Error(`carryOver: packings of ${from.total} and ${to.total} elements`);
  const out: { from: number; to: number; n: number }[] = [];
  let k = 0;
  for (const r of to.runs) {
    // The flat interval of this run that falls into the range.
    const s = r.start + Math.max(0, range.start - r.at);
    const e = r.start + Math.min(r.end - r.start, range.end - r.at);
    if (s >= e) continue;
    while (k < from.runs.length && from.runs[k]!.end <= s) k++;
    for (let j = k; j < from.runs.length && from.runs[j]!.start < e; j++) {
      const f = from.runs[j]!;
      const a = Math.max(s, f.start);
      const b = Math.min(e, f.end);
      if (a >= b) continue;
      const piece = { from: f.at + a - f.start, to: r.at + a - r.start - range.start, n: b - a };
      const last = out.at(-1);
      if (last && last.from + last.n === piece.from && last.to + last.n === piece.to) last.n += piece.n;
      else out.push(piece);
    }
  }
  return out;
}
