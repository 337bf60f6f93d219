import * as tf from '@tensorflow/tfjs';
import { colsumFor } from './simd-modules.js';
import type { Info, KernelArgs, WasmBackendLike, WrappingKernelConfig } from './wasm-backend.js';

/**
 * Sum over leading axes (a bias's gradient: dY [rows, width] summed over its rows) on the column
 * sums of kernels/simd/colsum.ts, which give the same bits; tfjs-backend-wasm 4.22 reduces only
 * innermost axes and transposes the whole input first. Other reductions keep the backend's kernel.
 */
function leadingAxesSum(plain: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs): Info => {
    const { x } = args.inputs as { x: Info };
    const { axis, keepDims } = args.attrs as unknown as { axis: number | number[]; keepDims: boolean };
    const backend = args.backend as WasmBackendLike;
    const axes = [...tf.util.parseAxisParam(axis, x.shape)].sort((a, b) => a - b);
    const k = axes.length;
    const leading = k > 0 && k < x.shape.length && axes.every((a, i) => a === i);
    const kernel = leading && x.dtype === 'float32' ? colsumFor(backend) : null;
    if (!kernel) return plain(args) as Info;
    const rows = tf.util.sizeFromShape(x.shape.slice(0, k));
    const kept = x.shape.slice(k);
    const out = backend.makeOutput(keepDims ? [...axes.map(() => 1), ...kept] : kept, 'float32');
    kernel.colsum(backend.getMemoryOffset(x.dataId), backend.getMemoryOffset(out.dataId), rows, tf.util.sizeFromShape(kept));
    return out;
  };
}

export const sumConfig: WrappingKernelConfig = { kernelName: 'Sum', backendName: 'wasm', wrap: leadingAxesSum };
