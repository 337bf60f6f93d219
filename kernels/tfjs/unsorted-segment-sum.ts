import type * as tf from '@tensorflow/tfjs';
import { withScratch, type Info, type KernelArgs, type WasmBackendLike } from './wasm-backend.js';

/**
 * UnsortedSegmentSum, the gradient of gather (embedding lookups), which tfjs-backend-wasm 4.22
 * does not ship; built only from kernels it does (Cast, OneHot, Reshape, BatchMatMul), so that a
 * gather a user model adds trains on wasm instead of failing with "kernel not found".
 *
 * out[s] = sum of x[i] over i with segmentIds[i] = s, as onehot(segmentIds)^T x: one matMul,
 * exact up to float summation order. Ids outside [0, numSegments) contribute nothing, as in TF.
 */
function unsortedSegmentSum(args: KernelArgs): Info {
  const { x, segmentIds } = args.inputs as { x: Info; segmentIds: Info };
  const { numSegments } = args.attrs as unknown as { numSegments: number };
  const backend = args.backend as WasmBackendLike;
  if (segmentIds.shape.length !== 1) throw new Error('UnsortedSegmentSum (wasm): segmentIds must be 1-D');
  const n = segmentIds.shape[0]!;
  const rest = x.shape.slice(1);
  const inner = rest.reduce((a, c) => a * c, 1);
  return withScratch(backend, (run) => {
    const ids = segmentIds.dtype === 'int32' ? segmentIds : run('Cast', { x: segmentIds }, { dtype: 'int32' });
    // wasm's OneHot always writes int32 (whatever dtype says), so it is cast explicitly.
    const oneHotInt = run('OneHot', { indices: ids }, { dtype: 'int32', depth: numSegments, onValue: 1, offValue: 0 });
    const oneHot = run('Cast', { x: oneHotInt }, { dtype: 'float32' });
    const oh3 = run('Reshape', { x: oneHot }, { shape: [1, n, numSegments] });
    const xf = x.dtype === 'float32' ? x : run('Cast', { x }, { dtype: 'float32' });
    const x3 = run('Reshape', { x: xf }, { shape: [1, n, inner] });
    const sum = run('BatchMatMul', { a: oh3, b: x3 }, { transposeA: true, transposeB: false });
    const shaped = run('Reshape', { x: sum }, { shape: [numSegments, ...rest] });
    return x.dtype === 'float32' ? shaped : run('Cast', { x: shaped }, { dtype: x.dtype });
  });
}

export const unsortedSegmentSumConfig: tf.KernelConfig = {
  kernelName: 'UnsortedSegmentSum',
  backendName: 'wasm',
  kernelFunc: unsortedSegmentSum,
};
