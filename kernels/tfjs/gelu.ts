import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import { boundFloat32, normGeluFor } from './simd-modules.js';
import { wasmKernelsReady, type Info, type KernelArgs } from './wasm-backend.js';

/**
 * GELU and its gradient on the SIMD module of kernels/simd/norm-gelu.ts (the one LayerNorm uses):
 * Gelu: {x} -> y; GeluGrad: {dy, x} -> dx (elementwise, any shape). Only model/layers.ts calls
 * them, after wasmNormGeluActive() said yes.
 */
export const GELU_KERNELS = { gelu: 'CxrGelu', geluGrad: 'CxrGeluGrad' } as const;

/**
 * Whether layers.ts's layerNorm and gelu run on the SIMD kernels now (active backend wasm, SIMD,
 * option normGelu on): one module and one option serve both, registered together.
 */
export function wasmNormGeluActive(): boolean {
  return kernelOptions().normGelu && wasmKernelsReady([GELU_KERNELS.gelu], normGeluFor);
}

/** The kernels for this call's backend; the callers checked wasmNormGeluActive() first. */
export function normGeluKernels(args: KernelArgs) {
  return boundFloat32(args, normGeluFor, {
    cannotRun: 'the SIMD LayerNorm/GELU kernels cannot run on this engine (check wasmNormGeluActive() first)',
    inputs: 'SIMD LayerNorm/GELU',
  });
}

function gelu(args: KernelArgs): Info {
  const { k, backend, at } = normGeluKernels(args);
  const { x } = args.inputs as { x: Info };
  const y = backend.makeOutput([...x.shape], 'float32');
  k.gelu(at(x), at(y), tf.util.sizeFromShape(x.shape));
  return y;
}

function geluGrad(args: KernelArgs): Info {
  const { k, backend, at } = normGeluKernels(args);
  const { dy, x } = args.inputs as { dy: Info; x: Info };
  if (!tf.util.arraysEqual(dy.shape, x.shape)) throw new Error(`GeluGrad (wasm): dy [${dy.shape}] and x [${x.shape}] differ`);
  const dx = backend.makeOutput([...x.shape], 'float32');
  k.geluGrad(at(dy), at(x), at(dx), tf.util.sizeFromShape(x.shape));
  return dx;
}

export const geluConfig: tf.KernelConfig = { kernelName: GELU_KERNELS.gelu, backendName: 'wasm', kernelFunc: gelu };
export const geluGradConfig: tf.KernelConfig = { kernelName: GELU_KERNELS.geluGrad, backendName: 'wasm', kernelFunc: geluGrad };
