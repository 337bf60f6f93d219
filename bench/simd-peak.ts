import { assembleModule, Body, countdown, instantiateWith, wasmApi } from '../kernels/wasm-asm.js';

/**
 * What this engine's WebAssembly SIMD can do at best on one thread: a GEMM micro-kernel's inner
 * loop (per k, `rows` load-splats of A, `vecs` vector loads of B, rows x vecs multiply-adds into
 * register accumulators) run from L1, with nothing else: no packing, no edges, no stores until the
 * end. No real product gets there, so FLOPs / this peak is a lower bound on a product's time. The
 * step benchmark uses it to say how far any wasm GEMM could take the step.
 *
 * Two forms of the multiply-add: `mul-add` (f32x4.mul then f32x4.add, baseline wasm SIMD) and
 * `fma` (f32x4.relaxed_madd of relaxed SIMD, one fused instruction where the CPU has FMA), which
 * engines without relaxed SIMD refuse to compile (then null).
 */

/** Tiles tried: register use decides which is fastest (V8 keeps one of x64's 16 xmm as scratch). */
const TILES: readonly { rows: number; vecs: number }[] = [
  { rows: 4, vecs: 2 },
  { rows: 6, vecs: 2 },
  { rows: 3, vecs: 3 },
];

function loopBody(tile: { rows: number; vecs: number }, fma: boolean): Body {
  const f = new Body(['i32']);
  const count = 0;
  const p = f.local('i32');
  const acc = Array.from({ length: tile.rows * tile.vecs }, () => f.local('v128'));
  const b = Array.from({ length: tile.vecs }, () => f.local('v128'));
  const a = f.local('v128');
  countdown(f, count, () => {
    // Addresses move with k (within 2 KiB, so L1) as a packed panel's do; a constant address would
    // let the compiler hoist the loads.
    f.get(count).i32Const(0x7f0).i32And().set(p);
    b.forEach((v, j) =>
      f
        .get(p)
        .v128Load(4096 + 16 * j)
        .set(v),
    );
    for (let r = 0; r < tile.rows; r++) {
      f.get(p)
        .v128Load32Splat(8192 + 4 * r)
        .set(a);
      for (let j = 0; j < tile.vecs; j++) {
        const c = acc[r * tile.vecs + j]!;
        if (fma) f.get(a).get(b[j]!).get(c).f32x4RelaxedMadd().set(c);
        else f.get(c).get(a).get(b[j]!).f32x4Mul().f32x4Add().set(c);
      }
    }
  });
  // Stored, so that none of the work is dead.
  acc.forEach((c, i) =>
    f
      .i32Const(16 * i)
      .get(c)
      .v128Store(),
  );
  return f;
}

export interface SimdPeak {
  /** GFLOP/s (a multiply-add of four lanes is 8 FLOPs), best tile. */
  gflops: number;
  tile: string;
}

/**
 * The best of TILES for `form`, each timed `reps` times for about `ms` milliseconds; null where
 * the engine cannot compile the form.
 */
export function simdPeak(form: 'mul-add' | 'fma', ms = 150, reps = 3): SimdPeak | null {
  const wasm = wasmApi;
  if (!wasm) return null;
  const memory = new wasm.Memory({ initial: 1 });
  let best: SimdPeak | null = null;
  for (const tile of TILES) {
    const bytes = assembleModule([{ name: 'k', body: loopBody(tile, form === 'fma') }]);
    const exports = instantiateWith(bytes, memory);
    if (!exports) return null;
    const k = exports.k as (n: number) => void;
    const flopsPerIter = 8 * tile.rows * tile.vecs;
    // Calibrate past the baseline compiler: V8 tiers a hot function up to optimised code.
    let n = 1 << 16;
    for (;;) {
      const t0 = performance.now();
      k(n);
      const took = performance.now() - t0;
      if (took > ms / 4 || n >= 1 << 30) {
        n = Math.min(2 ** 31 - 1, Math.max(1, Math.round((n * ms) / Math.max(took, 1e-3))));
        break;
      }
      n *= 4;
    }
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      k(n);
      const gflops = (n * flopsPerIter) / ((performance.now() - t0) * 1e6);
      if (!best || gflops > best.gflops) best = { gflops, tile: `${tile.rows}x${4 * tile.vecs}` };
    }
  }
  return best;
}

/** Multiply-add FLOPs of one recorded matMul kernel: 2 * (output elements) * k. */
export function matMulFlops(aShape: readonly number[], outShape: readonly number[]): number {
  const m = outShape[outShape.length - 2]!;
  const aMatrix = aShape[aShape.length - 2]! * aShape[aShape.length - 1]!;
  // a is [m, k] or, transposed, [k, m]: either way its matrix holds m * k values.
  const k = m === 0 ? 0 : aMatrix / m;
  return 2 * outShape.reduce((x, y) => x * y, 1) * k;
}
