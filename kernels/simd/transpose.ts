import { addTo, assembleModule, Body, countdown, instantiateWith, wasmApi } from '../wasm-asm.js';

/**
 * Strided copies of contiguous rows of 4-byte values in WebAssembly SIMD, for the attention's
 * transposes on tfjs-backend-wasm: [B, T, 3H, d] -> [B, 3H, T, d] and the merge back, and their
 * gradients (perm [0, 2, 1, 3]). The backend's Transpose is generic over the axes, while each row of
 * d values stays whole under that permutation and moves as d/4 v128 loads and stores.
 *
 * One routine covers the transpose, the head split (q, k, v as three outputs, so no SplitV after it,
 * and q's scaling on the way) and the head merge of the backward (three inputs, so no Concat before
 * it), which is where most of the time went (bench/transpose.ts): out row (o, a, b) of
 * `inner` values comes from in row (o, a, b) under separate byte strides for each of o, a, b on each
 * side. The copy moves bits (v128 and f32 loads and stores do not touch them); `scaled` multiplies
 * each value by one f32 on the way, the f32 product tfjs's Multiply by a scalar makes.
 */

const I = 'i32';
const F = 'f32';
const V = 'v128';

/**
 * rows(src, dst, outer, na, nb, inner, sO, sA, sB, dO, dA, dB[, scale]): for o < outer, a < na,
 * b < nb, copy `inner` 4-byte values from src + o*sO + a*sA + b*sB to dst + o*dO + a*dA + b*dB
 * (byte offsets and strides), times `scale` when scaled.
 */
function rowsBody(scaled: boolean): Body {
  const f = new Body(scaled ? [I, I, I, I, I, I, I, I, I, I, I, I, F] : [I, I, I, I, I, I, I, I, I, I, I, I]);
  const [src, dst, outer, na, nb, inner, sO, sA, sB, dO, dA, dB, scale] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
  const o = f.local(I);
  const a = f.local(I);
  const b = f.local(I);
  const c = f.local(I);
  const nv = f.local(I);
  const tail = f.local(I);
  const aS = f.local(I); // row (o, a, 0) on each side
  const aD = f.local(I);
  const bS = f.local(I); // row (o, a, b)
  const bD = f.local(I);
  const pS = f.local(I); // the value being copied
  const pD = f.local(I);
  const sV = f.local(V);
  f.get(inner).i32Const(2).i32ShrU().set(nv);
  f.get(inner).i32Const(3).i32And().set(tail);
  if (scaled) f.get(scale!).f32x4Splat().set(sV);
  f.get(outer).set(o);
  countdown(f, o, () => {
    f.get(src).set(aS);
    f.get(dst).set(aD);
    f.get(na).set(a);
    countdown(f, a, () => {
      f.get(aS).set(bS);
      f.get(aD).set(bD);
      f.get(nb).set(b);
      countdown(f, b, () => {
        f.get(bS).set(pS);
        f.get(bD).set(pD);
        f.get(nv).set(c);
        countdown(f, c, () => {
          f.get(pD).get(pS).v128Load();
          if (scaled) f.get(sV).f32x4Mul();
          f.v128Store();
          addTo(f, pS, 16);
          addTo(f, pD, 16);
        });
        f.get(tail).set(c);
        countdown(f, c, () => {
          f.get(pD).get(pS).f32Load();
          if (scaled) f.get(scale!).f32Mul();
          f.f32Store();
          addTo(f, pS, 4);
          addTo(f, pD, 4);
        });
        addTo(f, bS, { local: sB });
        addTo(f, bD, { local: dB });
      });
      addTo(f, aS, { local: sA });
      addTo(f, aD, { local: dA });
    });
    addTo(f, src, { local: sO });
    addTo(f, dst, { local: dO });
  });
  return f;
}

const MODULE = assembleModule([
  { name: 'rows', body: rowsBody(false) },
  { name: 'rowsScaled', body: rowsBody(true) },
]);

/** Whether this engine can run the module (wasm SIMD). */
export const simdTransposeSupported = wasmApi?.validate(MODULE) ?? false;

/** Byte strides of the three row axes (o, a, b) on one side of a copy. */
export type RowStrides = readonly [number, number, number];

export interface SimdTranspose {
  /** Copy outer x na x nb rows of `inner` 4-byte values between the strided layouts (byte offsets and strides). */
  rows(src: number, dst: number, outer: number, na: number, nb: number, inner: number, ...strides: [...RowStrides, ...RowStrides]): void;
  /** The same, each value times `scale` in f32. */
  rowsScaled(
    src: number,
    dst: number,
    outer: number,
    na: number,
    nb: number,
    inner: number,
    ...rest: [...RowStrides, ...RowStrides, number]
  ): void;
}

/**
 * The kernel bound to `memory` (the tfjs wasm backend's heap), or null where it cannot run: no
 * wasm SIMD, or a memory this module cannot import (the threaded backend's shared memory).
 */
export function simdTranspose(memory: unknown): SimdTranspose | null {
  return instantiateWith(MODULE, memory) as unknown as SimdTranspose | null;
}

/**
 * A transpose as a swap of two adjacent groups of axes with the last axis kept last, or null where
 * `perm` is not one: axes that stay next to each other in order are merged, and what remains must
 * read [outer, X, Y, inner] -> [outer, Y, X, inner] (outer and inner possibly empty, i.e. 1).
 * [0, 2, 1, 3] on [B, T, 3H, d] is (B, T, 3H, d); [0, 1, 3, 2, 4] on the stem's [B, g, P, g, P] is
 * (B*g, P, g, P).
 */
export function adjacentSwap(
  shape: readonly number[],
  perm: readonly number[],
): { outer: number; x: number; y: number; inner: number } | null {
  const r = shape.length;
  if (perm.length !== r || r < 2) return null;
  // Groups of input axes, in output order: a run of perm where each entry is the previous plus one.
  const groups: number[][] = [];
  for (const p of perm) {
    const last = groups[groups.length - 1];
    if (last && last[last.length - 1]! + 1 === p) last.push(p);
    else groups.push([p]);
  }
  const size = (g: number[]) => g.reduce((n, a) => n * shape[a]!, 1);
  const starts = groups.map((g) => g[0]!);
  const k = groups.length;
  // After merging, the output order of the groups must be the input order with two neighbours
  // swapped, and the last group (inner) must stay last: [0, 2, 1, 3] or [0, 2, 1] without inner, etc.
  const order = starts.map((s) => starts.filter((t) => t < s).length);
  const swapped = (i: number) => order.every((g, j) => (j === i ? g === i + 1 : j === i + 1 ? g === i : g === j));
  for (let i = 0; i + 1 < k; i++) {
    if (!swapped(i)) continue;
    if (i + 2 !== k - 1) return null; // the last axis must stay last (whole rows move)
    const outer = groups.slice(0, i).reduce((n, g) => n * size(g), 1);
    return { outer, x: size(groups[i + 1]!), y: size(groups[i]!), inner: size(groups[k - 1]!) };
  }
  return null;
}
