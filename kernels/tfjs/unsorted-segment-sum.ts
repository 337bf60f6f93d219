import type * as tf from '@tensorflow/tfjs';
import { withScratch, type Info, type KernelArgs, type WasmBackendLike } from './wasm-backend.js';

/**
 * UnsortedSegmentSum, the gradient of gather (embedding lookups), which tfjs-backend-wasm 4.22
 * does not ship. out[s] = sum of x[i] over i with segmentIds[i] = s, in i's order in float64 and
 * rounded once, straight into the output in the heap, as the cpu kernel sums (the same bits); ids outside
 * [0, numSegments) contribute nothing, as in TF. It was onehot(segmentIds)^T x, one matMul: for
 * CLIP's token embedding (49408 rows) a [462, 49408] one-hot twice (int32, float32: 180 MB of
 * heap) and 23 GFLOP of products by zero per step (docs/performance.md, "ViT-B/16 sizes").
 */
function unsortedSegmentSum(args: KernelArgs): Info {
  const { x, segmentIds } = args.inputs as { x: Info; segmentIds: Info };
  const { numSegments } = args.attrs as unknown as { numSegments: number };
  const backend = args.backend as WasmBackendLike;
  if (segmentIds.shape.length !== 1) throw new Error('UnsortedSegmentSum (wasm): segmentIds must be 1-D');
  const memory = backend.wasm?.asm?.memory as { buffer: ArrayBuffer } | undefined;
  if (!memory) throw new Error('UnsortedSegmentSum (wasm): the backend exposes no heap');
  const n = segmentIds.shape[0]!;
  const rest = x.shape.slice(1);
  const inner = rest.reduce((a, c) => a * c, 1);
  return withScratch(backend, (run) => {
    const ids = segmentIds.dtype === 'int32' ? segmentIds : run('Cast', { x: segmentIds }, { dtype: 'int32' });
    const xf = x.dtype === 'float32' ? x : run('Cast', { x }, { dtype: 'float32' });
    const sum = backend.makeOutput([numSegments, ...rest], 'float32');
    // After the output is made: making it can grow the heap, which replaces its buffer.
    const at = (t: Info, length: number) => [memory.buffer, backend.getMemoryOffset(t.dataId), length] as const;
    const out = new Float32Array(...at(sum, numSegments * inner)).fill(0);
    const xs = new Float32Array(...at(xf, n * inner));
    const segment = new Int32Array(...at(ids, n));
    // The rows of each segment in i's order, summed in float64 and rounded once, as the cpu kernel's sum does.
    const rows = Array.from({ length: n }, (_, i) => i).filter((i) => segment[i]! >= 0 && segment[i]! < numSegments);
    rows.sort((a, b) => segment[a]! - segment[b]! || a - b);
    const acc = new Float64Array(inner);
    for (let k = 0; k < rows.length; ) {
      const s = segment[rows[k]!]!;
      acc.fill(0);
      for (; k < rows.length && segment[rows[k]!] === s; k++) {
        const r = rows[k]! * inner;
        for (let j = 0; j < inner; j++) acc[j]! += xs[r + j]!;
      }
      out.set(acc, s * inner);
    }
    if (x.dtype === 'float32') return sum;
    const cast = run('Cast', { x: sum }, { dtype: x.dtype });
    backend.disposeData(sum.dataId);
    return cast;
  });
}

export const unsortedSegmentSumConfig: tf.KernelConfig = {
  kernelName: 'UnsortedSegmentSum',
  backendName: 'wasm',
  kernelFunc: unsortedSegmentSum,
};
