import * as tf from '@tensorflow/tfjs';
import { withScratch, type Info, type KernelArgs, type WasmBackendLike } from './wasm-backend.js';

/**
 * Conv2DBackpropFilter, the gradient of conv2d with respect to its filter (a conv patch stem),
 * which tfjs-backend-wasm 4.22 does not ship; built only from kernels it does (PadV2,
 * StridedSlice, Reshape, BatchMatMul, Concat), so it runs at their speed and needs no wasm code.
 * The model itself patches by reshape + matMul; this is for a conv a user model adds, which then
 * trains on wasm instead of failing with "kernel not found".
 */

interface Conv2DBackpropFilterAttrs {
  strides: number | [number, number];
  pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
  dataFormat: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
  filterShape: [number, number, number, number];
}

/**
 * dW[i, j, :, :] = X_ij^T dY, where X_ij [b*oh*ow, ci] are the input pixels that kernel tap
 * (i, j) touches, taken from the zero-padded input with one strided slice per tap.
 */
function conv2DBackpropFilter(args: KernelArgs): Info {
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as Conv2DBackpropFilterAttrs;
  if (attrs.dataFormat !== 'NHWC') throw new Error('Conv2DBackpropFilter (wasm): only NHWC is supported');
  const backend = args.backend as WasmBackendLike;
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    attrs.filterShape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    'channelsLast',
  );
  const { batchSize: b, inChannels: ci, outChannels: co, outHeight: oh, outWidth: ow } = info;
  const { filterHeight: fh, filterWidth: fw, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
  const { top, bottom, left, right } = info.padInfo;
  return withScratch(backend, (run) => {
    const xp =
      top || bottom || left || right
        ? run(
            'PadV2',
            { x },
            {
              paddings: [
                [0, 0],
                [top, bottom],
                [left, right],
                [0, 0],
              ],
              constantValue: 0,
            },
          )
        : x;
    const dy2 = run('Reshape', { x: dy }, { shape: [1, b * oh * ow, co] });
    const taps: Info[] = [];
    for (let i = 0; i < fh; i++) {
      for (let j = 0; j < fw; j++) {
        const patch = run(
          'StridedSlice',
          { x: xp },
          {
            begin: [0, i * dh, j * dw, 0],
            end: [b, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, ci],
            strides: [1, sh, sw, 1],
            beginMask: 0,
            endMask: 0,
            ellipsisMask: 0,
            newAxisMask: 0,
            shrinkAxisMask: 0,
          },
        );
        const p2 = run('Reshape', { x: patch }, { shape: [1, b * oh * ow, ci] });
        taps.push(run('BatchMatMul', { a: p2, b: dy2 }, { transposeA: true, transposeB: false }));
      }
    }
    const stacked = taps.length === 1 ? taps[0]! : run('Concat', taps, { axis: 0 });
    return run('Reshape', { x: stacked }, { shape: [fh, fw, ci, co] });
  });
}

export const conv2DBackpropFilterConfig: tf.KernelConfig = {
  kernelName: 'Conv2DBackpropFilter',
  backendName: 'wasm',
  kernelFunc: conv2DBackpropFilter,
};
