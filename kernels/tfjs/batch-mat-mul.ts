import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import type { GemmVariant } from '../simd/gemm.js';
import { gemmFor } from './simd-modules.js';
import type { Info, KernelArgs, WasmBackendLike, WrappingKernelConfig } from './wasm-backend.js';

/**
 * BatchMatMul with transposeA/transposeB runs far slower than the plain product on
 * tfjs-backend-wasm 4.22 (XNNPACK only takes the untransposed layout), and every matMul gradient
 * uses those flags. Transposing the operand first (a memory-bound copy) and multiplying plainly
 * gives the same values at a fraction of the cost, for every caller including tfjs's own gradients.
 */
function untransposedBatchMatMul(plain: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs): Info => {
    const { a, b } = args.inputs as { a: Info; b: Info };
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as WasmBackendLike;
    const call = (x: Info, y: Info) =>
      plain({
        inputs: { a: x, b: y },
        backend: backend as unknown as tf.KernelBackend,
        attrs: { transposeA: false, transposeB: false },
      }) as Info;
    if (!transposeA && !transposeB) return call(a, b);
    const swapLast = (t: Info) => {
      const perm = t.shape.map((_, i) => i);
      const r = perm.length;
      [perm[r - 2], perm[r - 1]] = [perm[r - 1]!, perm[r - 2]!];
      return tf.getKernel('Transpose', 'wasm')!.kernelFunc({
        inputs: { x: t },
        backend: backend as unknown as tf.KernelBackend,
        attrs: { perm },
      }) as Info;
    };
    const at = transposeA ? swapLast(a) : a;
    const bt = transposeB ? swapLast(b) : b;
    const out = call(at, bt);
    if (at !== a) backend.disposeData(at.dataId);
    if (bt !== b) backend.disposeData(bt.dataId);
    return out;
  };
}

/**
 * For each index of the broadcast batch shape `outer` (row-major), the flat index into an
 * operand's batch dims `dims`: right-aligned as in NumPy, a size-1 (or missing) dim repeats.
 */
export function broadcastBatchIndex(outer: readonly number[], dims: readonly number[]): Int32Array {
  const total = outer.reduce((x, y) => x * y, 1);
  const out = new Int32Array(total);
  const lead = outer.length - dims.length;
  for (let t = 0; t < total; t++) {
    let rest = t;
    let idx = 0;
    let stride = 1;
    for (let d = outer.length - 1; d >= lead; d--) {
      const coord = rest % outer[d]!;
      rest = Math.floor(rest / outer[d]!);
      const size = dims[d - lead]!;
      if (size !== 1) idx += coord * stride;
      stride *= size;
    }
    out[t] = idx;
  }
  return out;
}

/** Which BatchMatMul path serves batch > 1 on the active wasm backend: 'simd' or 'fallback'. */
export function wasmBatchMatMulPath(): 'simd' | 'fallback' {
  return wasmGemmVariant() ? 'simd' : 'fallback';
}

/**
 * The GEMM build that serves BatchMatMul on the active wasm backend (batch > 1 products, and batch
 * 1 under the default scope 'all'), or null where the backend's own kernels do.
 */
export function wasmGemmVariant(): GemmVariant | null {
  if (tf.getBackend() !== 'wasm') throw new Error(`wasmGemmVariant: the active backend is ${tf.getBackend()}, not wasm`);
  if (kernelOptions().matMulScope === 'none') return null;
  return gemmFor(tf.backend() as unknown as WasmBackendLike)?.variant ?? null;
}

/**
 * BatchMatMul on the SIMD GEMM of kernels/simd/gemm.ts, which reads the operands in place in any
 * of the four layouts: the attention products (batch > 1), which the wasm kernel runs in a scalar
 * loop, and the dense layers' (batch 1), which XNNPACK runs a little slower in the step (the
 * transposed ones after an explicit Transpose; docs/performance.md). Engines without wasm SIMD,
 * non-float32 operands and the products the scope leaves out go to `plain`.
 */
function simdBatchedMatMul(plain: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs): Info => {
    const { a, b } = args.inputs as { a: Info; b: Info };
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as WasmBackendLike;
    const { matMulScope: scope, gemmBlocking: blocking } = kernelOptions();
    const outer = tf.backend_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const batch = outer.reduce((x, y) => x * y, 1);
    if (scope === 'none' || (batch <= 1 && scope !== 'all') || a.dtype !== 'float32' || b.dtype !== 'float32') return plain(args) as Info;
    const gemm = gemmFor(backend);
    if (!gemm) return plain(args) as Info;
    const ra = a.shape.length;
    const rb = b.shape.length;
    const [m, k] = transposeA ? [a.shape[ra - 1]!, a.shape[ra - 2]!] : [a.shape[ra - 2]!, a.shape[ra - 1]!];
    const [kb, n] = transposeB ? [b.shape[rb - 1]!, b.shape[rb - 2]!] : [b.shape[rb - 2]!, b.shape[rb - 1]!];
    if (k !== kb) {
      throw new Error(
        `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ${b.shape} ` +
          `and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
      );
    }
    const out = backend.makeOutput([...outer, m, n], 'float32');
    if (m === 0 || n === 0) return out;
    const scratch = backend.makeOutput([Math.ceil(gemm.scratchBytes(m, n, k, blocking) / 4)], 'float32');
    gemm.run(
      {
        m,
        n,
        k,
        transposeA,
        transposeB,
        a: backend.getMemoryOffset(a.dataId),
        b: backend.getMemoryOffset(b.dataId),
        aIndex: broadcastBatchIndex(outer, a.shape.slice(0, -2)),
        bIndex: broadcastBatchIndex(outer, b.shape.slice(0, -2)),
        c: backend.getMemoryOffset(out.dataId),
        scratch: backend.getMemoryOffset(scratch.dataId),
      },
      blocking,
    );
    backend.disposeData(scratch.dataId);
    return out;
  };
}

/** Every product on the SIMD GEMM where it runs; the rest on the backend's kernel with the operands untransposed first. */
export const batchMatMulConfig: WrappingKernelConfig = {
  kernelName: 'BatchMatMul',
  backendName: 'wasm',
  wrap: (plain) => simdBatchedMatMul(untransposedBatchMatMul(plain)),
};
