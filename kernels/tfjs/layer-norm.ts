import * as tf from '@tensorflow/tfjs';
import { normGeluKernels } from './gelu.js';
import type { Info, KernelArgs } from './wasm-backend.js';

/**
 * LayerNorm over the last axis and its gradient on the SIMD module of kernels/simd/norm-gelu.ts:
 * - LayerNorm: inputs {x [rows, cols], gamma [cols], beta [cols]}, attrs {eps} -> [y, mean [rows], rstd [rows]]
 * - LayerNormGrad: {dy, x, gamma, mean, rstd} -> [dx, dgamma, dbeta]
 * Only model/layers.ts calls them, after wasmNormGeluActive() (./gelu.ts) said yes.
 */
export const LAYER_NORM_KERNELS = { layerNorm: 'CxrLayerNorm', layerNormGrad: 'CxrLayerNormGrad' } as const;

function layerNorm(args: KernelArgs): Info[] {
  const { k, backend, at } = normGeluKernels(args);
  const { x, gamma, beta } = args.inputs as { x: Info; gamma: Info; beta: Info };
  const { eps } = args.attrs as unknown as { eps: number };
  if (x.shape.length !== 2) throw new Error(`LayerNorm (wasm): x must be 2-D, got shape [${x.shape}]`);
  const [rows, cols] = x.shape as [number, number];
  for (const [name, t] of [
    ['gamma', gamma],
    ['beta', beta],
  ] as const) {
    if (t.shape.length !== 1 || t.shape[0] !== cols)
      throw new Error(`LayerNorm (wasm): ${name} must have shape [${cols}], got [${t.shape}]`);
  }
  const y = backend.makeOutput([rows, cols], 'float32');
  const mean = backend.makeOutput([rows], 'float32');
  const rstd = backend.makeOutput([rows], 'float32');
  k.layerNorm(at(x), at(gamma), at(beta), at(y), at(mean), at(rstd), rows, cols, eps);
  return [y, mean, rstd];
}

function layerNormGrad(args: KernelArgs): Info[] {
  const { k, backend, at } = normGeluKernels(args);
  const { dy, x, gamma, mean, rstd } = args.inputs as { dy: Info; x: Info; gamma: Info; mean: Info; rstd: Info };
  const [rows, cols] = x.shape as [number, number];
  if (
    !tf.util.arraysEqual(dy.shape, x.shape) ||
    !tf.util.arraysEqual(gamma.shape, [cols]) ||
    !tf.util.arraysEqual(mean.shape, [rows]) ||
    !tf.util.arraysEqual(rstd.shape, [rows])
  ) {
    throw new Error(
      `LayerNormGrad (wasm): shapes do not match (dy [${dy.shape}], x [${x.shape}], gamma [${gamma.shape}], ` +
        `mean [${mean.shape}], rstd [${rstd.shape}])`,
    );
  }
  const dx = backend.makeOutput([rows, cols], 'float32');
  const dgamma = backend.makeOutput([cols], 'float32');
  const dbeta = backend.makeOutput([cols], 'float32');
  k.layerNormGrad(at(dy), at(x), at(gamma), at(mean), at(rstd), at(dx), at(dgamma), at(dbeta), rows, cols);
  return [dx, dgamma, dbeta];
}

export const layerNormConfig: tf.KernelConfig = {
  kernelName: LAYER_NORM_KERNELS.layerNorm,
  backendName: 'wasm',
  kernelFunc: layerNorm,
};
export const layerNormGradConfig: tf.KernelConfig = {
  kernelName: LAYER_NORM_KERNELS.layerNormGrad,
  backendName: 'wasm',
  kernelFunc: layerNormGrad,
};
