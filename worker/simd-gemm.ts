import { addTo, assembleModule, Body, countdown, whileLoop } from './wasm-asm.js';

/**
 * A batched fp32 GEMM in WebAssembly SIMD for tfjs-backend-wasm's BatchMatMul with batch > 1
 * (the attention products), which the backend runs in a scalar loop at ~2 GFLOP/s: XNNPACK only
 * serves its batch-1 path.
 *
 * The module imports the backend's own WebAssembly.Memory, so operands are read and results written
 * where tfjs keeps them (nothing is copied between memories; the only copies are the kernel's
 * own packed panels, in a scratch tensor). Per matrix, op(A) [m, k] is packed into panels of 4 rows
 * ([k][4] each) and op(B) [k, n] into panels of 8 columns ([k][8] each), zero-padded at the
 * edges; the packing reads any row/column strides, which is how transposeA/transposeB are
 * handled (no Transpose copy, and the product loop is the same for all four layouts). The
 * micro-kernel keeps a 4x8 block of C in eight f32x4 accumulators and streams the two panels:
 * per k, two vector loads of B, four load-splats of A, eight mul + eight add (wasm SIMD has no
 * FMA). The panel of B stays in L1 while the panels of A pass under it. There is no blocking of
 * k or m beyond that: right for the attention products (k <= 65 here); on the big dense products
 * XNNPACK is as fast or faster (`npm run bench -- batch-matmul`), so batch 1 stays with it.
 *
 * Every C element is sum_k a[i,k]*b[k,j] accumulated in increasing k with f32 mul then f32 add,
 * one thread, fixed order: the same bits on every run, and for a matrix whatever else is in the
 * batch. (Other kernels sum in other orders, so they agree to rounding, not bit for bit.)
 */

const I = 'i32';

/**
 * pack(src, rowStride, colStride, outer, inner, dst, width), strides in bytes: for each panel of
 * `width` consecutive outer indices o, dst[panel][x][o % width] = src[o*rowStride + x*colStride]
 * for x < inner, and 0 where o >= outer. Packs A (outer = m rows, inner = k, width 4) and B
 * (outer = n columns, inner = k, width 8) alike.
 */
function packBody(): Body {
  const f = new Body([I, I, I, I, I, I, I]);
  const [src, rs, cs, outer, inner, dst, width] = [0, 1, 2, 3, 4, 5, 6];
  const o = f.local(I); // panel's first outer index
  const lane = f.local(I);
  const s = f.local(I);
  const d = f.local(I);
  const x = f.local(I);
  const dStride = f.local(I); // width * 4 bytes between consecutive inner indices
  f.get(width).i32Const(2).i32Shl().set(dStride);
  whileLoop(f, () => f.get(o).get(outer).i32LtU(), () => {
    f.block((done) => {
      // A full panel whose outer indices are adjacent in memory (A transposed, B not) is `width`
      // contiguous floats per inner index: vector copies, one pass down the rows. Lane by lane,
      // the same rows would be walked `width` times at a large stride, which at power-of-two
      // strides (a [2080, 512] gradient) keeps evicting itself from L1.
      f.get(rs).i32Const(4).i32Eq().get(o).get(width).i32Add().get(outer).i32GtU().i32Eqz().i32And().if(() => {
        f.get(src).get(o).i32Const(2).i32Shl().i32Add().set(s);
        f.get(dst).set(d);
        f.get(inner).set(x);
        countdown(f, x, () => {
          f.i32Const(0).set(lane);
          f.loop((chunks) => {
            f.get(d).get(lane).i32Add().get(s).get(lane).i32Add().v128Load().v128Store();
            addTo(f, lane, 16);
            f.get(lane).get(dStride).i32LtU().brIf(chunks);
          });
          addTo(f, s, { local: cs });
          addTo(f, d, { local: dStride });
        });
        f.br(done);
      });
      f.i32Const(0).set(lane);
      f.loop((lanes) => {
        f.get(dst).get(lane).i32Const(2).i32Shl().i32Add().set(d);
        f.get(inner).set(x);
        // The panel's lanes past the last row/column are zeros, so the kernel needs no edge case.
        f.get(o).get(lane).i32Add().get(outer).i32LtU().if(() => {
          f.get(src).get(o).get(lane).i32Add().get(rs).i32Mul().i32Add().set(s);
          countdown(f, x, () => {
            f.get(d).get(s).f32Load().f32Store();
            addTo(f, s, { local: cs });
            addTo(f, d, { local: dStride });
          });
        });
        // x is 0 here after a copied lane; an absent one is filled with zeros.
        countdown(f, x, () => {
          f.get(d).f32Const0().f32Store();
          addTo(f, d, { local: dStride });
        });
        addTo(f, lane, 1);
        f.get(lane).get(width).i32LtU().brIf(lanes);
      });
    });
    // next panel: dst += inner * width * 4, o += width
    f.get(dst).get(inner).get(dStride).i32Mul().i32Add().set(dst);
    addTo(f, o, { local: width });
  });
  return f;
}

const MR = 4;
const NR = 8;

/**
 * product(ap, bp, c, m, n, k, tile): C [m, n] (row-major, contiguous) = packed A x packed B.
 * `tile` is 32 floats of scratch for the blocks at the right and bottom edges.
 */
function productBody(): Body {
  const f = new Body([I, I, I, I, I, I, I]);
  const [ap, bp, c, m, n, k, tile] = [0, 1, 2, 3, 4, 5, 6];
  const i = f.local(I);
  const j = f.local(I);
  const pa = f.local(I);
  const pb = f.local(I);
  const aPanel = f.local(I);
  const bPanel = f.local(I);
  const kk = f.local(I);
  const ldc = f.local(I);
  const out = f.local(I);
  const rows = f.local(I);
  const cols = f.local(I);
  const r = f.local(I);
  const q = f.local(I);
  const b0 = f.local('v128');
  const b1 = f.local('v128');
  const x = f.local('v128');
  const acc = Array.from({ length: MR * 2 }, () => f.local('v128'));

  f.get(n).i32Const(2).i32Shl().set(ldc);
  f.get(bp).set(bPanel);
  whileLoop(f, () => f.get(j).get(n).i32LtU(), () => {
    f.get(ap).set(aPanel);
    f.i32Const(0).set(i);
    whileLoop(f, () => f.get(i).get(m).i32LtU(), () => {
      for (const a of acc) f.v128Zero().set(a);
      f.get(aPanel).set(pa);
      f.get(bPanel).set(pb);
      f.get(k).set(kk);
      countdown(f, kk, () => {
        f.get(pb).v128Load(0).set(b0);
        f.get(pb).v128Load(16).set(b1);
        for (let row = 0; row < MR; row++) {
          f.get(pa).v128Load32Splat(4 * row).set(x);
          f.get(acc[2 * row]!).get(x).get(b0).f32x4Mul().f32x4Add().set(acc[2 * row]!);
          f.get(acc[2 * row + 1]!).get(x).get(b1).f32x4Mul().f32x4Add().set(acc[2 * row + 1]!);
        }
        addTo(f, pa, 4 * MR);
        addTo(f, pb, 4 * NR);
      });
      // out = c + i*ldc + j*4
      f.get(c).get(i).get(ldc).i32Mul().i32Add().get(j).i32Const(2).i32Shl().i32Add().set(out);
      // rows = min(4, m - i), cols = min(8, n - j)
      f.get(m).get(i).i32Sub().tee(rows).i32Const(MR).get(rows).i32Const(MR).i32LtU().select().set(rows);
      f.get(n).get(j).i32Sub().tee(cols).i32Const(NR).get(cols).i32Const(NR).i32LtU().select().set(cols);
      f.block((done) => {
        f.get(rows).i32Const(MR).i32Eq().get(cols).i32Const(NR).i32Eq().i32And().if(() => {
          for (let row = 0; row < MR; row++) {
            f.get(out).get(acc[2 * row]!).v128Store(0);
            f.get(out).get(acc[2 * row + 1]!).v128Store(16);
            addTo(f, out, { local: ldc });
          }
          f.br(done);
        });
        // An edge block: through the tile, then only its valid part into C.
        for (let row = 0; row < MR; row++) {
          f.get(tile).get(acc[2 * row]!).v128Store(32 * row);
          f.get(tile).get(acc[2 * row + 1]!).v128Store(32 * row + 16);
        }
        f.i32Const(0).set(r);
        whileLoop(f, () => f.get(r).get(rows).i32LtU(), () => {
          f.i32Const(0).set(q);
          whileLoop(f, () => f.get(q).get(cols).i32LtU(), () => {
            f.get(out).get(q).i32Const(2).i32Shl().i32Add();
            f.get(tile).get(r).i32Const(5).i32Shl().i32Add().get(q).i32Const(2).i32Shl().i32Add().f32Load();
            f.f32Store();
            addTo(f, q, 1);
          });
          addTo(f, out, { local: ldc });
          addTo(f, r, 1);
        });
      });
      // next A panel: aPanel += k * 16, i += 4
      f.get(aPanel).get(k).i32Const(4).i32Shl().i32Add().set(aPanel);
      addTo(f, i, MR);
    });
    f.get(bPanel).get(k).i32Const(5).i32Shl().i32Add().set(bPanel);
    addTo(f, j, NR);
  });
  return f;
}

const MODULE = assembleModule([
  { name: 'pack', body: packBody() },
  { name: 'product', body: productBody() },
]);

// The project's lib settings carry no WebAssembly types; this is the part used here.
declare const WebAssembly:
  | {
      validate(bytes: Uint8Array): boolean;
      Memory: new (d: { initial: number; maximum?: number; shared?: boolean }) => { buffer: ArrayBuffer };
      Module: new (bytes: Uint8Array) => object;
      Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
    }
  | undefined;

/** Whether this engine can run the module (wasm SIMD). */
export const simdGemmSupported = typeof WebAssembly !== 'undefined' && WebAssembly.validate(MODULE);

/** One batched product, all offsets in bytes into the memory the kernel was made for. */
export interface GemmBatch {
  m: number;
  n: number;
  k: number;
  transposeA: boolean;
  transposeB: boolean;
  /** Where each of the batch's A and B matrices starts. */
  a: number;
  b: number;
  /** For output matrix t, the A and B matrices it multiplies (broadcasting repeats some). */
  aIndex: ArrayLike<number>;
  bIndex: ArrayLike<number>;
  /** Output [aIndex.length, m, n], contiguous. */
  c: number;
  /** Scratch of at least gemmScratchBytes(m, n, k) bytes. */
  scratch: number;
}

const roundUp = (x: number, r: number) => Math.ceil(x / r) * r;

/** Scratch a product needs: both packed operands and the edge tile. */
export function gemmScratchBytes(m: number, n: number, k: number): number {
  return 4 * (roundUp(m, MR) * k + roundUp(n, NR) * k + MR * NR);
}

export interface SimdGemm {
  /** C[t] = op(A[aIndex[t]]) op(B[bIndex[t]]) for every t. */
  run(p: GemmBatch): void;
}

/**
 * The kernel bound to `memory` (the tfjs wasm backend's heap), or null where it cannot run: no
 * wasm SIMD, or a memory this module cannot import (the threaded backend's shared memory).
 */
export function simdGemm(memory: unknown): SimdGemm | null {
  if (!simdGemmSupported || typeof WebAssembly === 'undefined') return null;
  let exports: Record<string, unknown>;
  try {
    exports = new WebAssembly.Instance(new WebAssembly.Module(MODULE), { e: { m: memory } }).exports;
  } catch {
    return null;
  }
  const pack = exports.pack as (src: number, rs: number, cs: number, outer: number, inner: number, dst: number, width: number) => void;
  const product = exports.product as (ap: number, bp: number, c: number, m: number, n: number, k: number, tile: number) => void;
  return {
    run(p) {
      const { m, n, k } = p;
      const aPacked = p.scratch;
      const bPacked = aPacked + 4 * roundUp(m, MR) * k;
      const tile = bPacked + 4 * roundUp(n, NR) * k;
      // A stored [m, k] (or [k, m] when transposed); B stored [k, n] (or [n, k]).
      // Byte steps between consecutive rows i of A / columns j of B, and along k.
      const [aPerRow, aPerK] = p.transposeA ? [4, 4 * m] : [4 * k, 4];
      const [bPerCol, bPerK] = p.transposeB ? [4 * k, 4] : [4, 4 * n];
      let packedA = -1;
      let packedB = -1;
      for (let t = 0; t < p.aIndex.length; t++) {
        const ai = p.aIndex[t]!;
        const bi = p.bIndex[t]!;
        if (ai !== packedA) pack(p.a + ai * 4 * m * k, aPerRow, aPerK, m, k, aPacked, MR);
        if (bi !== packedB) pack(p.b + bi * 4 * k * n, bPerCol, bPerK, n, k, bPacked, NR);
        packedA = ai;
        packedB = bi;
        product(aPacked, bPacked, p.c + t * 4 * m * n, m, n, k, tile);
      }
    },
  };
}
