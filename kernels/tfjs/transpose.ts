import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import { adjacentSwap } from '../simd/transpose.js';
import { transposeFor } from './simd-modules.js';
import { BYTES_PER_ELEMENT, type Info, type KernelArgs, type WasmBackendLike, type WrappingKernelConfig } from './wasm-backend.js';

/** The swap the rows kernel would make for this transpose, or null where the backend's kernel runs. */
function rowSwap(shape: readonly number[], perm: readonly number[], dtype: tf.DataType): ReturnType<typeof adjacentSwap> {
  return kernelOptions().transpose && BYTES_PER_ELEMENT[dtype] === 4 ? adjacentSwap(shape, perm) : null;
}

/** Which kernel serves Transpose of this shape, perm and dtype on the active wasm backend: the row copies or the backend's own. */
export function wasmTransposePath(shape: readonly number[], perm: readonly number[], dtype: tf.DataType): 'rows' | 'backend' {
  if (tf.getBackend() !== 'wasm') throw new Error(`wasmTransposePath: the active backend is ${tf.getBackend()}, not wasm`);
  return rowSwap(shape, perm, dtype) && transposeFor(tf.backend() as unknown as WasmBackendLike) ? 'rows' : 'backend';
}

/**
 * Transpose on kernels/simd/transpose.ts where the perm swaps two adjacent groups of axes and keeps
 * the last axis last (the attention's [0, 2, 1, 3], the stem's [0, 1, 3, 2, 4]): whole rows move
 * as v128 copies, where tfjs-backend-wasm 4.22's kernel is generic over the axes
 * (bench/transpose.ts). Other perms, other dtypes and engines without SIMD keep the backend's
 * kernel. A permutation moves bits: the same result.
 */
function rowTranspose(plain: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs): Info => {
    const { x } = args.inputs as { x: Info };
    const { perm } = args.attrs as unknown as { perm: number[] };
    const backend = args.backend as WasmBackendLike;
    const swap = rowSwap(x.shape, perm, x.dtype);
    const k = swap ? transposeFor(backend) : null;
    if (!swap || !k) return plain(args) as Info;
    const out = backend.makeOutput(
      perm.map((p) => x.shape[p]!),
      x.dtype,
    );
    const { outer, x: nx, y: ny, inner } = swap;
    if (outer * nx * ny * inner === 0) return out;
    // Output rows (o, a < ny, b < nx) in order; input row (o, b, a).
    const plane = nx * ny * inner * 4;
    k.rows(
      backend.getMemoryOffset(x.dataId),
      backend.getMemoryOffset(out.dataId),
      outer,
      ny,
      nx,
      inner,
      plane,
      inner * 4,
      ny * inner * 4,
      plane,
      nx * inner * 4,
      inner * 4,
    );
    return out;
  };
}

export const transposeConfig: WrappingKernelConfig = { kernelName: 'Transpose', backendName: 'wasm', wrap: rowTranspose };
