import { geluOf, geluSlopeOf, loadPartial, storePartial, temps } from './norm-gelu.js';
import { addTo, assembleModule, Body, countdown, instantiateWith, wasmApi, whileLoop } from '../wasm-asm.js';

/**
 * A batched fp32 GEMM in WebAssembly SIMD for tfjs-backend-wasm's BatchMatMul: every product of
 * the training step, the dense layers' batch-1 ones (which XNNPACK would run, the transposed ones
 * after an explicit Transpose) and the attention products with batch > 1 (which the backend runs in
 * a scalar loop). Measurements: docs/performance.md ("Kernels: the figures behind the comments").
 *
 * The module imports the backend's own WebAssembly.Memory, so operands are read and results written
 * where tfjs keeps them; the only copies are the kernel's own packed panels, in a scratch tensor.
 * The loops are the Goto/BLIS ones: k in blocks of at most `kc`, m in blocks of at most `mc`; per k
 * block, op(B) [kc, n] is packed into panels of NR columns; op(A) is read where it is stored (see
 * AMode) or packed per (k, m) block into panels of MR rows. Packing reads any row/column strides,
 * which is how transposeA/transposeB are handled: the product loop is the same for all four
 * layouts. The micro-kernel keeps an MR x NR block of C in f32x4 accumulators; the blocks at the
 * right and bottom edges have their own kernels, the same loop cut to their rows and columns (see
 * blockBody). A B panel stays in L1 while the A panels of the m block pass under it from L2; the
 * packed A block is made just before it is used, so it is still in cache.
 *
 * Two builds, chosen by what the engine validates:
 * - 'fma': f32x4.relaxed_madd, which x64 V8 compiles to vfmadd where the CPU has FMA3; tile 3x12
 *   (nine accumulators, three B vectors, one splat) for products at least WIDE_N columns wide, 4x8
 *   for narrower ones (see TILES). The faster build; 6x8 would spill (15 live vectors). Relaxed
 *   SIMD is standard from V8 11.4 (Node 22); Node 20 has it behind a flag that kernels/backend.ts
 *   sets before the module is validated and compiled.
 * - 'muladd': 4x8 with f32x4.mul then f32x4.add (its 3x12 spills: the product needs a register),
 *   for engines with plain wasm SIMD only.
 *
 * Summation order, the same in every build and tile: every C element is one accumulator that starts
 * at 0 and takes a[i,k]*b[k,j] for k = 0, 1, ..., K-1 in that order; cutting k into blocks only
 * parks the accumulator in C between blocks (an exact f32 store and load), so the block sizes do not
 * change the result. 'fma' rounds once per step (acc = fl(a*b + acc)), 'muladd' twice
 * (fl(acc + fl(a*b))); on a CPU without FMA relaxed_madd is mul+add. One thread, fixed order: the
 * same bits on every run on a machine, and for a matrix whatever else is in the batch. (Other
 * kernels sum in other orders, so they agree to rounding, not bit for bit.)
 */

const I = 'i32';

export type GemmVariant = 'fma' | 'muladd';

interface Tile {
  /** Rows of C per micro-kernel call. */
  mr: number;
  /** Columns of C per call, a multiple of 4 (one f32x4 per 4). */
  nr: number;
  fma: boolean;
}

/**
 * Each build's micro-kernels, widest first. The FMA build has two: 3x12 for the dense products,
 * 4x8 for narrow ones (the attention products, n = 32 and 65 here), where 12 columns would leave
 * an edge block on every row (n = 32: a third of the blocks); `npm run bench -- batch-matmul`
 * found 3x12 slower than 4x8 there and faster on the dense ones. Both tiles sum in the same order,
 * so which one ran does not change a bit.
 */
const TILES: Record<GemmVariant, readonly Tile[]> = {
  fma: [
    { mr: 3, nr: 12, fma: true },
    { mr: 4, nr: 8, fma: true },
  ],
  muladd: [{ mr: 4, nr: 8, fma: false }],
};

/** Products at least this many columns wide take a build's first (widest) tile. */
const WIDE_N = 96;

/**
 * pack{W}(src, rowStride, colStride, outer, inner, dst), strides in bytes: for each panel of W
 * consecutive outer indices o < outer, dst[panel][x][o % W] = src[o*rowStride + x*colStride] for
 * x < inner; the lanes o >= outer of a last partial panel are unspecified (the edge kernels
 * neither store them nor let them reach a lane they store). Packs A (outer = m rows, inner = k,
 * W = MR) and B (outer = n columns, inner = k, W = NR) alike; one function per panel width, so
 * that the copies of a panel's row are unrolled for it. The two layouts the GEMM meets each have a
 * vector path for whole panels; the last partial panel (and any other strides) goes lane by lane.
 */
function packBody(width: number): Body {
  const f = new Body([I, I, I, I, I, I]);
  const [src, rs, cs, outer, inner, dst] = [0, 1, 2, 3, 4, 5];
  const dStride = 4 * width; // bytes between consecutive inner indices in a panel
  const o = f.local(I); // panel's first outer index
  const lane = f.local(I);
  const s = f.local(I);
  const d = f.local(I);
  const x = f.local(I);
  const panels = f.local(I);
  const pl = f.local(I);
  const dPanel = f.local(I); // inner * W * 4: bytes per panel
  const x4 = f.local(I); // inner rounded down to a multiple of 4
  const rowOff = Array.from({ length: width }, () => f.local(I)); // l * rowStride
  const v = Array.from({ length: Math.max(4, width) }, () => f.local('v128'));
  const t = Array.from({ length: 4 }, () => f.local('v128'));
  f.get(inner).i32Const(dStride).i32Mul().set(dPanel);
  f.get(outer).i32Const(width).i32DivU().set(panels);
  f.get(inner).i32Const(-4).i32And().set(x4);

  // Outer indices adjacent in memory (A transposed, B not): each inner index x is one contiguous
  // source row, copied W floats at a time into every full panel, one pass down the rows. Panel by
  // panel, the same rows would be walked once per panel at a large stride, which at power-of-two
  // strides (a [2080, 1024] gradient) keeps evicting itself from L1.
  f.get(rs)
    .i32Const(4)
    .i32Eq()
    .get(panels)
    .i32Const(0)
    .i32Ne()
    .i32And()
    .if(() => {
      f.i32Const(0).set(x);
      whileLoop(
        f,
        () => f.get(x).get(inner).i32LtU(),
        () => {
          f.get(src).get(x).get(cs).i32Mul().i32Add().set(s);
          f.get(dst).get(x).i32Const(dStride).i32Mul().i32Add().set(d);
          f.get(panels).set(pl);
          countdown(f, pl, () => {
            // Exactly the panel's W floats: nothing read past the row's last full panel, which may end the memory.
            for (let b = 0; b + 16 <= dStride; b += 16) f.get(d).get(s).v128Load(b).v128Store(b);
            if (width % 4 >= 2)
              f.get(d)
                .get(s)
                .i64Load(dStride & ~15)
                .i64Store(dStride & ~15);
            if (width % 2)
              f.get(d)
                .get(s)
                .f32Load(dStride - 4)
                .f32Store(dStride - 4);
            addTo(f, s, dStride);
            addTo(f, d, { local: dPanel });
          });
          addTo(f, x, 1);
        },
      );
      f.get(panels).i32Const(width).i32Mul().set(o);
      f.get(dst).get(panels).get(dPanel).i32Mul().i32Add().set(dst);
    });

  // Inner indices adjacent (A not transposed, B transposed): a panel is W rows of floats, turned
  // into [x][W] four x at a time by 4x4 transposes (W = 3: three rows into twelve floats). A last
  // partial panel too: its missing rows read the last one again (lanes no kernel stores; see
  // blockBody), so the attention products' 65th row or column is not a lane-by-lane pass.
  f.get(cs)
    .i32Const(4)
    .i32Eq()
    .if(() => {
      whileLoop(
        f,
        () => f.get(o).get(outer).i32LtU(),
        () => {
          // rowOff[l] = min(l, outer - o - 1) * rowStride
          rowOff.forEach((r, l) => {
            f.get(rs).i32Const(l).i32Mul();
            f.get(outer).get(o).i32Sub().i32Const(1).i32Sub().get(rs).i32Mul();
            f.get(o).i32Const(l).i32Add().get(outer).i32LtU().select().set(r);
          });
          f.get(src).get(o).get(rs).i32Mul().i32Add().set(s);
          f.get(dst).set(d);
          f.i32Const(0).set(x);
          whileLoop(
            f,
            () => f.get(x).get(x4).i32LtU(),
            () => {
              const load = (l: number) => f.get(s).get(rowOff[l]!).i32Add().v128Load().set(v[l]!);
              const shuffle = (a: number, b: number, lanes: [number, number, number, number]) => f.get(a).get(b).f32x4Shuffle(lanes);
              if (width === 3) {
                const [r0, r1, r2] = [v[0]!, v[1]!, v[2]!];
                for (let l = 0; l < 3; l++) load(l);
                // r0x0 r1x0 r2x0 r0x1 | r1x1 r2x1 r0x2 r1x2 | r2x2 r0x3 r1x3 r2x3
                shuffle(r0, r1, [0, 4, 1, 5]).set(t[0]!); // r0x0 r1x0 r0x1 r1x1
                shuffle(r1, r2, [1, 5, 2, 6]).set(t[1]!); // r1x1 r2x1 r1x2 r2x2
                shuffle(r0, r1, [2, 6, 3, 7]).set(t[2]!); // r0x2 r1x2 r0x3 r1x3
                f.get(d);
                shuffle(t[0]!, r2, [0, 1, 4, 2]).v128Store(0);
                f.get(d);
                shuffle(t[1]!, r0, [0, 1, 6, 2]).v128Store(16);
                f.get(d);
                shuffle(r2, t[2]!, [2, 6, 7, 3]).v128Store(32);
              } else {
                for (let g = 0; g < width / 4; g++) {
                  const [r0, r1, r2, r3] = [v[4 * g]!, v[4 * g + 1]!, v[4 * g + 2]!, v[4 * g + 3]!];
                  for (let l = 4 * g; l < 4 * g + 4; l++) load(l);
                  shuffle(r0, r1, [0, 4, 1, 5]).set(t[0]!);
                  shuffle(r2, r3, [0, 4, 1, 5]).set(t[1]!);
                  shuffle(r0, r1, [2, 6, 3, 7]).set(t[2]!);
                  shuffle(r2, r3, [2, 6, 3, 7]).set(t[3]!);
                  const out = (xi: number, a: number, b: number, lanes: [number, number, number, number]) => {
                    f.get(d);
                    shuffle(a, b, lanes).v128Store(xi * dStride + 16 * g);
                  };
                  out(0, t[0]!, t[1]!, [0, 1, 4, 5]);
                  out(1, t[0]!, t[1]!, [2, 3, 6, 7]);
                  out(2, t[2]!, t[3]!, [0, 1, 4, 5]);
                  out(3, t[2]!, t[3]!, [2, 3, 6, 7]);
                }
              }
              addTo(f, s, 16);
              addTo(f, d, 4 * dStride);
              addTo(f, x, 4);
            },
          );
          whileLoop(
            f,
            () => f.get(x).get(inner).i32LtU(),
            () => {
              for (let l = 0; l < width; l++)
                f.get(d)
                  .get(s)
                  .get(rowOff[l]!)
                  .i32Add()
                  .f32Load()
                  .f32Store(4 * l);
              addTo(f, s, 4);
              addTo(f, d, dStride);
              addTo(f, x, 1);
            },
          );
          addTo(f, dst, { local: dPanel });
          addTo(f, o, width);
        },
      );
    });

  // The rest lane by lane: a last partial panel of rows/columns adjacent in memory (whose missing
  // lanes are left as they are: reading a whole panel there could run past the memory), and
  // every panel of any other strides.
  whileLoop(
    f,
    () => f.get(o).get(outer).i32LtU(),
    () => {
      f.i32Const(0).set(lane);
      f.loop((lanes) => {
        f.get(dst).get(lane).i32Const(2).i32Shl().i32Add().set(d);
        f.get(inner).set(x);
        f.get(o)
          .get(lane)
          .i32Add()
          .get(outer)
          .i32LtU()
          .if(() => {
            f.get(src).get(o).get(lane).i32Add().get(rs).i32Mul().i32Add().set(s);
            countdown(f, x, () => {
              f.get(d).get(s).f32Load().f32Store();
              addTo(f, s, { local: cs });
              addTo(f, d, dStride);
            });
          });
        addTo(f, lane, 1);
        f.get(lane).i32Const(width).i32LtU().brIf(lanes);
      });
      // next panel
      addTo(f, dst, { local: dPanel });
      addTo(f, o, width);
    },
  );
  return f;
}

/**
 * What the GEMM does with the finished sums of C (after the last k block; the k blocks before it
 * park the bare sums in C). Each is the operation the unfused graph would run after the product,
 * on the same values in the same order, so the fused result has the same bits as matMul then add
 * (then GELU):
 * - 'bias': z = fl(sum + bias[j]), as tf.add(matMul(x, W), b), in the block kernel before the store.
 * - 'residual': then fl(z + r[i, j]) of a second [m, n] matrix, as tf.add(r, dense(x, W, b))
 *   (f32 addition commutes, so r + z and z + r are the same bits), in the block kernel too.
 * - 'multiply' (on its own): fl(sum * s[i, j]) of a second [m, n] matrix, as tf.mul(matMul(..), s):
 *   the GELU's backward, dy W^T times gelu'(z), in the product that makes dy W^T. Not in the block
 *   kernels but in mulRows, over each block of MC whole rows of C once its sums are stored (still in
 *   L2): s is then read front to back, where in the block kernels each 3x12 block's rows were three
 *   cache misses 2 KiB apart that the next block waited for.
 * - 'gelu': C = gelu(z) and a second output gelu'(z): ./norm-gelu.ts's GELU and the
 *   factor its geluGrad multiplies dy by, in the same instructions (geluOf, geluSlopeOf), so that
 *   the backward is dy * gelu'(z), a plain multiply with geluGrad's bits, instead of erf and exp
 *   again. Not in the block kernels but in geluStrip, over each column panel of z just stored
 *   by the bias kernels (MC x NR floats, still in L1): one copy of the GELU code per module
 *   instead of one per block shape, and no GELU constants and temporaries competing with the
 *   accumulators for the 16 vector registers.
 */
export type EpilogueStep = 'bias' | 'residual' | 'gelu' | 'multiply';

/** The epilogues the block kernels are built with (suffixed with their letters); 'gelu' is geluStrip's, 'multiply' mulRows'. */
const EPILOGUES: readonly (readonly EpilogueStep[])[] = [[], ['bias'], ['bias', 'residual']];

const epilogueSuffix = (steps: readonly EpilogueStep[]) => (steps.length ? '_' + steps.map((e) => e[0]).join('') : '');

/**
 * geluStrip(c, s, rows, cols, ldc): for the rows x cols floats at c (row stride ldc bytes),
 * z = c[i, j], c[i, j] = gelu(z), s[i, j] = gelu'(z), s laid out as c. A row's last cols % 4
 * go through the same vector math in a partial vector.
 */
function geluStripBody(): Body {
  const f = new Body([I, I, I, I, I]);
  const [c, sl, rows, cols, ldc] = [0, 1, 2, 3, 4];
  const r = f.local(I);
  const count = f.local(I);
  const tail = f.local(I);
  const pc = f.local(I);
  const ps = f.local(I);
  const z = f.local('v128');
  const res = f.local('v128');
  const t = temps(f);
  f.get(cols).i32Const(3).i32And().set(tail);
  f.get(rows).set(r);
  countdown(f, r, () => {
    f.get(c).set(pc);
    f.get(sl).set(ps);
    f.get(cols).i32Const(2).i32ShrU().set(count);
    countdown(f, count, () => {
      f.get(pc).v128Load().set(z);
      geluOf(f, z, t, res);
      f.get(pc).get(res).v128Store();
      geluSlopeOf(f, z, t, res);
      f.get(ps).get(res).v128Store();
      addTo(f, pc, 16);
      addTo(f, ps, 16);
    });
    f.get(tail).if(() => {
      loadPartial(f, pc, tail, z);
      geluOf(f, z, t, res);
      storePartial(f, pc, tail, res);
      geluSlopeOf(f, z, t, res);
      storePartial(f, ps, tail, res);
    });
    addTo(f, c, { local: ldc });
    addTo(f, sl, { local: ldc });
  });
  return f;
}

/** mulRows(c, s, n): c[i] = c[i] * s[i] for the n floats at c and s, the last n % 4 one by one (the same f32 multiply). */
function mulRowsBody(): Body {
  const f = new Body([I, I, I]);
  const [c, sl, n] = [0, 1, 2];
  const count = f.local(I);
  f.get(n).i32Const(2).i32ShrU().set(count);
  countdown(f, count, () => {
    f.get(c).get(c).v128Load().get(sl).v128Load().f32x4Mul().v128Store();
    addTo(f, c, 16);
    addTo(f, sl, 16);
  });
  f.get(n).i32Const(3).i32And().set(count);
  countdown(f, count, () => {
    f.get(c).get(c).f32Load().get(sl).f32Load().f32Mul().f32Store();
    addTo(f, c, 4);
    addTo(f, sl, 4);
  });
  return f;
}

/**
 * t{tile}_{R}x{C}{kernelSuffix}(ap, bp, c, rowPanels, colPanels, k, ldc, accumulate, bias, delta, aStride):
 * for each of colPanels packed B panels (NR wide) and rowPanels A panels (MR rows, read as `aMode`
 * says), the R x C block of C at the panels' corner (row stride ldc bytes) = A panel x B panel, or += when
 * `accumulate` is 1 (the k blocks after the first). R = MR and C = NR is the micro-kernel of the
 * whole blocks; the partial ones at the right (C < NR) and bottom (R < MR) edges are the same loop
 * with fewer accumulators, which read only their rows of the A panel and their vectors of the B
 * panel and load and store only their columns of C (lane loads and stores for the last 1-3): no
 * per-element path, no copy. The padding lanes of a last vector are computed and never stored,
 * each lane its own sum, so whatever the packing left in them cannot reach C.
 * With an epilogue (see EpilogueStep): `bias` is the byte offset of the bias of the block's first
 * column; `delta` is the byte distance from C to the residual matrix, laid out as C (each unused
 * where its epilogue has no such operand).
 */
function blockBody(
  { mr, nr, fma }: Tile,
  rows: number,
  cols: number,
  epilogue: readonly EpilogueStep[] = [],
  aMode: AMode = 'packed',
): Body {
  const hasBias = epilogue.includes('bias');
  const hasResidual = epilogue.includes('residual');
  const f = new Body([I, I, I, I, I, I, I, I, I, I, I]);
  const [ap, bp, c, rowPanels, colPanels, k, ldc, accumulate] = [0, 1, 2, 3, 4, 5, 6, 7];
  const [bias, delta, aStride] = [8, 9, 10];
  const nv = Math.ceil(cols / 4);
  const rem = cols % 4; // valid lanes of the last vector; 0: all four
  const i = f.local(I);
  const j = f.local(I);
  const pa = f.local(I);
  const pb = f.local(I);
  const aPanel = f.local(I);
  const bPanel = f.local(I);
  const kk = f.local(I);
  const out = f.local(I);
  const outCol = f.local(I);
  const p = f.local(I);
  const aStep = f.local(I); // bytes from one A panel (MR rows) to the next
  const pr = Array.from({ length: rows }, () => f.local(I)); // 'rows': each row's pointer
  const bStep = f.local(I);
  const outStep = f.local(I); // MR rows of C: MR * ldc
  const biasCol = hasBias ? f.local(I) : -1;
  const q = hasResidual ? f.local(I) : -1; // p + delta
  const bv = Array.from({ length: nv }, () => f.local('v128'));
  const x = f.local('v128');
  const acc = Array.from({ length: rows * nv }, () => f.local('v128'));

  /** Push vector v of the row at local `at`: all four lanes but for a partial last vector (zeros above). */
  const loadVec = (at: number, v: number) => {
    const partial = v === nv - 1 ? rem : 0;
    if (partial === 0) f.get(at).v128Load(16 * v);
    else if (partial === 1) f.get(at).v128Load32Zero(16 * v);
    else f.get(at).v128Load64Zero(16 * v);
    if (partial === 3) {
      f.set(x);
      f.get(at)
        .get(x)
        .v128Load32Lane(2, 16 * v + 8);
    }
  };
  /** Store local `a` as vector v of the row at local `at`: only the valid lanes of a partial one. */
  const storeVec = (at: number, a: number, v: number) => {
    const partial = v === nv - 1 ? rem : 0;
    if (partial === 0)
      f.get(at)
        .get(a)
        .v128Store(16 * v);
    else if (partial === 1)
      f.get(at)
        .get(a)
        .v128Store32Lane(0, 16 * v);
    else
      f.get(at)
        .get(a)
        .v128Store64Lane(0, 16 * v);
    if (partial === 3)
      f.get(at)
        .get(a)
        .v128Store32Lane(2, 16 * v + 8);
  };

  if (aMode === 'packed')
    f.get(k)
      .i32Const(4 * mr)
      .i32Mul()
      .set(aStep);
  else if (aMode === 'rows') f.get(aStride).i32Const(mr).i32Mul().set(aStep);
  else f.i32Const(4 * mr).set(aStep);
  f.get(k)
    .i32Const(4 * nr)
    .i32Mul()
    .set(bStep);
  f.get(ldc).i32Const(mr).i32Mul().set(outStep);
  f.get(bp).set(bPanel);
  f.get(c).set(outCol);
  if (hasBias) f.get(bias).set(biasCol);
  f.get(colPanels).set(j);
  countdown(f, j, () => {
    f.get(ap).set(aPanel);
    f.get(outCol).set(out);
    f.get(rowPanels).set(i);
    countdown(f, i, () => {
      for (const a of acc) f.v128Zero().set(a);
      f.get(accumulate).if(() => {
        f.get(out).set(p);
        for (let row = 0; row < rows; row++) {
          for (let v = 0; v < nv; v++) {
            loadVec(p, v);
            f.set(acc[row * nv + v]!);
          }
          addTo(f, p, { local: ldc });
        }
      });
      f.get(aPanel).set(pa);
      if (aMode === 'rows') pr.forEach((q, r) => f.get(aPanel).get(aStride).i32Const(r).i32Mul().i32Add().set(q));
      f.get(bPanel).set(pb);
      f.get(k).set(kk);
      countdown(f, kk, () => {
        for (let v = 0; v < nv; v++)
          f.get(pb)
            .v128Load(16 * v)
            .set(bv[v]!);
        for (let row = 0; row < rows; row++) {
          if (aMode === 'rows') f.get(pr[row]!).v128Load32Splat().set(x);
          else
            f.get(pa)
              .v128Load32Splat(4 * row)
              .set(x);
          for (let v = 0; v < nv; v++) {
            const a = acc[row * nv + v]!;
            if (fma) f.get(x).get(bv[v]!).get(a).f32x4RelaxedMadd().set(a);
            else f.get(a).get(x).get(bv[v]!).f32x4Mul().f32x4Add().set(a);
          }
        }
        if (aMode === 'packed') addTo(f, pa, 4 * mr);
        else if (aMode === 'rows') for (const q of pr) addTo(f, q, 4);
        else addTo(f, pa, { local: aStride });
        addTo(f, pb, 4 * nr);
      });
      f.get(out).set(p);
      for (let row = 0; row < rows; row++) {
        if (q >= 0) f.get(p).get(delta).i32Add().set(q);
        for (let v = 0; v < nv; v++) {
          const a = acc[row * nv + v]!;
          if (hasBias) {
            f.get(a);
            loadVec(biasCol, v);
            f.f32x4Add().set(a);
          }
          if (hasResidual) {
            f.get(a);
            loadVec(q, v);
            f.f32x4Add().set(a);
          }
          storeVec(p, a, v);
        }
        addTo(f, p, { local: ldc });
      }
      addTo(f, aPanel, { local: aStep });
      addTo(f, out, { local: outStep });
    });
    addTo(f, bPanel, { local: bStep });
    addTo(f, outCol, 4 * nr);
    if (hasBias) addTo(f, biasCol, 4 * nr);
  });
  return f;
}

/**
 * Where a block kernel reads A: from 'packed' panels ([k][MR]), or in place, with `aStride` bytes
 * between rows ('rows': k adjacent, A as stored: one pointer per row) or between consecutive k
 * ('cols': rows adjacent, A transposed: one pointer, the rows at 4-byte offsets). In place, the
 * operand's first pass from memory overlaps the first column panel's multiply-adds, where a
 * packing pass has nothing to overlap with and mostly waits for memory (docs/performance.md, "A
 * read in place"). Packing stays for a transposed A whose rows are 4 KiB or more apart (each k
 * then lands in the same L1 set, which made the in-place read slower than packing) and for every
 * other case the in-place builds leave out.
 */
export type AMode = 'packed' | 'rows' | 'cols';

/** The epilogues each A mode is built with: 'cols' serves the weight gradients and attention products, which have none. */
const A_MODE_EPILOGUES: Record<AMode, readonly (readonly EpilogueStep[])[]> = { packed: EPILOGUES, rows: EPILOGUES, cols: [[]] };

/** Transposed A is read in place when its rows are closer than this (bytes). */
const COLS_MAX_STRIDE = 4096;

/** The name suffix of the block kernels with these epilogue steps reading A this way. */
const kernelSuffix = (steps: readonly EpilogueStep[], am: AMode) => `${epilogueSuffix(steps)}_${am}`;

/** How `p`'s A is read: in place where a build serves it, else packed. */
export function gemmAMode(p: { m: number; transposeA: boolean; epilogue?: unknown }): AMode {
  if (!p.transposeA) return 'rows';
  return !p.epilogue && 4 * p.m < COLS_MAX_STRIDE ? 'cols' : 'packed';
}

/** Every block shape of a tile: R = 1..MR rows by C = 1..NR columns. */
const blockShapes = ({ mr, nr }: Tile) => Array.from({ length: mr * nr }, (_, q) => [1 + Math.floor(q / nr), 1 + (q % nr)] as const);

/** The panel widths a build's tiles pack to: each tile's MR (A) and NR (B). */
const packWidths = (tiles: readonly Tile[]) => [...new Set(tiles.flatMap((t) => [t.mr, t.nr]))];

const buildModule = (tiles: readonly Tile[]) =>
  assembleModule([
    ...packWidths(tiles).map((w) => ({ name: `pack${w}`, body: packBody(w) })),
    { name: 'geluStrip', body: geluStripBody() },
    { name: 'mulRows', body: mulRowsBody() },
    ...tiles.flatMap((t, i) =>
      (Object.keys(A_MODE_EPILOGUES) as AMode[]).flatMap((am) =>
        A_MODE_EPILOGUES[am].flatMap((e) =>
          blockShapes(t).map(([r, c]) => ({ name: `t${i}_${r}x${c}${kernelSuffix(e, am)}`, body: blockBody(t, r, c, e, am) })),
        ),
      ),
    ),
  ]);

const MODULES: Record<GemmVariant, Uint8Array> = {
  fma: buildModule(TILES.fma),
  muladd: buildModule(TILES.muladd),
};

/** Whether this engine can run the GEMM at all (wasm SIMD: the mul+add build validates). */
export const simdGemmSupported = wasmApi?.validate(MODULES.muladd) ?? false;

/**
 * The builds this engine validates now, fastest first: ['fma', 'muladd'], ['muladd'] or [].
 * Asked at call time, not at import: on Node 20 relaxed SIMD validates only after
 * kernels/backend.ts has set V8's flag.
 */
export function gemmVariants(): GemmVariant[] {
  const wasm = wasmApi;
  return wasm ? (['fma', 'muladd'] as const).filter((v) => wasm.validate(MODULES[v])) : [];
}

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
  /** Scratch of at least scratchBytes(m, n, k) bytes. */
  scratch: number;
  /**
   * Applied to the finished sums before they are stored (see EpilogueStep): the bias, [n] floats
   * at `bias`, added to every row of every output, giving z; then either a residual
   * [aIndex.length, m, n] at `residual` added, or C = gelu(z) and gelu'(z) written to `slope`
   * ([aIndex.length, m, n]). Or, without a bias, the sums times `multiply` ([aIndex.length, m, n]).
   */
  epilogue?: { bias: number; residual?: number; slope?: number } | { multiply: number };
}

/** Block sizes: k in blocks of at most kc, m of at most mc rows (rounded up to whole panels). */
export interface GemmBlocking {
  kc: number;
  mc: number;
  /** A product whose k is at most this runs as one k block, whatever kc says. */
  wholeK?: number;
}

/**
 * Chosen with `npm run bench -- batch-matmul --blocking` (docs/performance.md): kc 256 keeps a B
 * panel at 12 KiB; mc 120 keeps the packed A block (~120 KiB) in L2. A k of 384 or 512 (the dense
 * layers' dX and c_proj) goes faster as one block (C is stored once, not parked and reloaded), a
 * long one (the weight gradients, k = batch x tokens) slower (its transposed A packs into twice the
 * panel), so only k <= 512 runs whole.
 */
export const DEFAULT_BLOCKING: GemmBlocking = { kc: 256, mc: 120, wholeK: 512 };

const roundUp = (x: number, r: number) => Math.ceil(x / r) * r;
const LINE = 64;

export interface SimdGemm {
  readonly variant: GemmVariant;
  /** Bytes of scratch a product of these sizes needs: the packed blocks. */
  scratchBytes(m: number, n: number, k: number, blocking?: GemmBlocking): number;
  /** C[t] = op(A[aIndex[t]]) op(B[bIndex[t]]) (then the epilogue) for every t (the scratch sized with the same blocking). */
  run(p: GemmBatch, blocking?: GemmBlocking): void;
}

/**
 * The `variant` build (by default the fastest that validates) bound to `memory` (the tfjs wasm
 * backend's heap), or null where it cannot run: no wasm SIMD (or no relaxed SIMD for 'fma'), or a
 * memory this module cannot import (the threaded backend's shared memory).
 */
export function simdGemm(memory: unknown, variant: GemmVariant | undefined = gemmVariants()[0]): SimdGemm | null {
  const exports = variant === undefined ? null : instantiateWith(MODULES[variant], memory);
  if (!exports) return null;
  type Pack = (src: number, rs: number, cs: number, outer: number, inner: number, dst: number) => void;
  type Block = (
    ap: number,
    bp: number,
    c: number,
    rowPanels: number,
    colPanels: number,
    k: number,
    ldc: number,
    accumulate: number,
    ...epilogue: number[]
  ) => void;
  const kernels = TILES[variant].map((t, i) => {
    // blocks[kernel suffix][R][C]: the kernel of an R x C block (index 0 unused).
    const blocks: Record<string, Block[][]> = {};
    for (const am of Object.keys(A_MODE_EPILOGUES) as AMode[]) {
      for (const e of A_MODE_EPILOGUES[am]) {
        const suffix = kernelSuffix(e, am);
        const byShape: Block[][] = (blocks[suffix] = []);
        for (const [r, c] of blockShapes(t)) (byShape[r] ??= [])[c] = exports[`t${i}_${r}x${c}${suffix}`] as Block;
      }
    }
    const { mr, nr } = t;
    /**
     * C [m, n] (row stride ldc bytes) = A [m, k] (packed, or in place `aStride` apart, per `am`)
     * x packed B [k, n], or += that: the whole blocks in one call, then the right edge's column,
     * the bottom edge's row and their corner. The block kernels apply `steps` of the epilogue:
     * `bias` is the offset of column 0's bias and `delta` goes to every kernel;
     * with `strip`, one column panel at a time, each handed to strip(c, cols) once its rows are done.
     */
    const product = (
      ap: number,
      bp: number,
      c: number,
      m: number,
      n: number,
      k: number,
      ldc: number,
      accumulate: number,
      steps: readonly EpilogueStep[],
      bias: number,
      delta: number,
      strip: ((c: number, cols: number) => void) | undefined,
      am: AMode,
      aStride: number,
    ) => {
      const blk = blocks[kernelSuffix(steps, am)]!;
      const [rowPanels, rows] = [Math.floor(m / mr), m % mr];
      const [colPanels, cols] = [Math.floor(n / nr), n % nr];
      const aPanelBytes = am === 'packed' ? 4 * mr * k : am === 'rows' ? mr * aStride : 4 * mr;
      const [aEdge, bEdge] = [ap + rowPanels * aPanelBytes, bp + colPanels * 4 * nr * k];
      const [cBottom, cRight] = [c + rowPanels * mr * ldc, c + colPanels * 4 * nr];
      const biasRight = bias + colPanels * 4 * nr;
      if (strip) {
        for (let j = 0; j < colPanels; j++) {
          const [bj, cj, biasj] = [bp + j * 4 * nr * k, c + j * 4 * nr, bias + j * 4 * nr];
          if (rowPanels) blk[mr]![nr]!(ap, bj, cj, rowPanels, 1, k, ldc, accumulate, biasj, delta, aStride);
          if (rows) blk[rows]![nr]!(aEdge, bj, cBottom + j * 4 * nr, 1, 1, k, ldc, accumulate, biasj, delta, aStride);
          strip(cj, nr);
        }
      } else {
        if (rowPanels && colPanels) blk[mr]![nr]!(ap, bp, c, rowPanels, colPanels, k, ldc, accumulate, bias, delta, aStride);
        if (rows && colPanels) blk[rows]![nr]!(aEdge, bp, cBottom, 1, colPanels, k, ldc, accumulate, bias, delta, aStride);
      }
      if (rowPanels && cols) blk[mr]![cols]!(ap, bEdge, cRight, rowPanels, 1, k, ldc, accumulate, biasRight, delta, aStride);
      if (rows && cols) blk[rows]![cols]!(aEdge, bEdge, cBottom + colPanels * 4 * nr, 1, 1, k, ldc, accumulate, biasRight, delta, aStride);
      if (strip && cols) strip(cRight, cols);
    };
    return { ...t, product, packA: exports[`pack${mr}`] as Pack, packB: exports[`pack${nr}`] as Pack };
  });
  const sizes = (m: number, n: number, k: number, blocking: GemmBlocking) => {
    const { mr, nr, product, packA, packB } = kernels[n >= WIDE_N ? 0 : kernels.length - 1]!;
    const kc = Math.max(1, Math.floor(k <= (blocking.wholeK ?? 0) ? k : blocking.kc));
    const mc = roundUp(Math.max(1, Math.floor(blocking.mc)), mr);
    const kb = Math.min(k, kc);
    // Each packed block starts on a cache line (the scratch itself may not: LINE bytes of slack),
    // so the kernel's vector loads never straddle two lines.
    const aBytes = roundUp(4 * roundUp(Math.min(m, mc), mr) * kb, LINE);
    const bBytes = roundUp(4 * roundUp(n, nr) * kb, LINE);
    return { mr, nr, product, packA, packB, kc, mc, aBytes, bBytes, total: LINE + aBytes + bBytes };
  };
  return {
    variant,
    scratchBytes: (m, n, k, blocking = DEFAULT_BLOCKING) => sizes(m, n, k, blocking).total,
    run(p, blocking = DEFAULT_BLOCKING) {
      const { m, n, k } = p;
      if (m === 0 || n === 0) return;
      const { product, packA, packB, kc, mc, aBytes } = sizes(m, n, k, blocking);
      const aPacked = roundUp(p.scratch, LINE);
      const bPacked = aPacked + aBytes;
      const ldc = 4 * n;
      const e = p.epilogue;
      const b = e && 'bias' in e ? e : null;
      // The block kernels' part of the epilogue; a GELU and a multiply run over C once it is stored.
      const steps: EpilogueStep[] = !b ? [] : ['bias', ...(b.residual !== undefined ? ['residual' as const] : [])];
      if (b && b.residual !== undefined && b.slope !== undefined)
        throw new Error('simdGemm: an epilogue has a residual or a GELU, not both');
      // The residual, gelu' and multiplier are laid out as C: one byte distance from C serves
      // every output matrix (i32 arithmetic wraps, as the kernel's address sums do).
      const other = !e ? undefined : b ? (b.residual ?? b.slope) : (e as { multiply: number }).multiply;
      const delta = ((other ?? p.c) - p.c) | 0;
      const bias = b?.bias ?? 0;
      const gelu =
        b?.slope !== undefined ? (exports.geluStrip as (c: number, s: number, rows: number, cols: number, ldc: number) => void) : null;
      const mulRows = e && !b ? (exports.mulRows as (c: number, s: number, n: number) => void) : null;
      // A stored [m, k] (or [k, m] when transposed); B stored [k, n] (or [n, k]).
      // Byte steps between consecutive rows i of A / columns j of B, and along k.
      const [aPerRow, aPerK] = p.transposeA ? [4, 4 * m] : [4 * k, 4];
      const [bPerCol, bPerK] = p.transposeB ? [4 * k, 4] : [4, 4 * n];
      // With one k block (and one m block) the packed operand is the whole matrix, so a
      // broadcast operand repeated across the batch is packed once.
      const am = gemmAMode(p);
      // Read in place, A's rows ('rows') or its k ('cols') are this many bytes apart.
      const aStride = am === 'rows' ? aPerRow : am === 'cols' ? aPerK : 0;
      const oneK = k <= kc;
      const oneM = oneK && m <= mc;
      let packedA = -1;
      let packedB = -1;
      for (let t = 0; t < p.aIndex.length; t++) {
        const aBase = p.a + p.aIndex[t]! * 4 * m * k;
        const bBase = p.b + p.bIndex[t]! * 4 * k * n;
        const c = p.c + t * 4 * m * n;
        // k = 0 still makes one pass, which writes the zeros (plus the epilogue).
        for (let k0 = 0; k0 === 0 || k0 < k; k0 += kc) {
          const kb = Math.min(kc, k - k0);
          // The epilogue runs once, on the finished sums of the last k block.
          const last = k0 + kc >= k;
          const blockSteps = last ? steps : [];
          if (!(oneK && p.bIndex[t] === packedB)) packB(bBase + k0 * bPerK, bPerCol, bPerK, n, kb, bPacked);
          packedB = oneK ? p.bIndex[t]! : -1;
          for (let i0 = 0; i0 < m; i0 += mc) {
            const mb = Math.min(mc, m - i0);
            const aAt = aBase + i0 * aPerRow + k0 * aPerK;
            if (am === 'packed') {
              if (!(oneM && p.aIndex[t] === packedA)) packA(aAt, aPerRow, aPerK, mb, kb, aPacked);
              packedA = oneM ? p.aIndex[t]! : -1;
            }
            const strip = last && gelu ? (cs: number, cols: number) => gelu(cs, (cs + delta) | 0, mb, cols, ldc) : undefined;
            product(
              am === 'packed' ? aPacked : aAt,
              bPacked,
              c + i0 * ldc,
              mb,
              n,
              kb,
              ldc,
              k0 > 0 ? 1 : 0,
              blockSteps,
              bias,
              delta,
              strip,
              am,
              aStride,
            );
            // The m block's rows of C are contiguous (row stride n), and so are the multiplier's.
            if (last && mulRows) mulRows(c + i0 * ldc, (c + i0 * ldc + delta) | 0, mb * n);
          }
        }
      }
    },
  };
}
