import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import { softmaxFor } from './simd-modules.js';
import { wasmKernelsReady, type Info, type KernelArgs, type WasmBackendLike } from './wasm-backend.js';

/**
 * The gradient of softmax over the last axis (kernels/simd/softmax.ts): inputs {dy, y} (the same
 * shape, y the softmax's output) -> dx, with the bits of tfjs's Multiply/Sum/Multiply/Sub on this
 * backend. Only model/layers.ts calls it, after wasmSoftmaxGradActive() said yes.
 */
export const SOFTMAX_GRAD_KERNEL = 'CxrSoftmaxGrad';

/** Whether layers.ts's softmax takes its gradient from the one-pass kernel now (wasm, SIMD, option on). */
export function wasmSoftmaxGradActive(): boolean {
  return kernelOptions().softmaxGrad && wasmKernelsReady([SOFTMAX_GRAD_KERNEL], softmaxFor);
}

function softmaxGrad(args: KernelArgs): Info {
  const { dy, y } = args.inputs as { dy: Info; y: Info };
  const backend = args.backend as WasmBackendLike;
  const k = softmaxFor(backend);
  if (!k) throw new Error('the SIMD softmax gradient cannot run on this engine (check wasmSoftmaxGradActive() first)');
  if (!tf.util.arraysEqual(dy.shape, y.shape) || y.shape.length === 0)
    throw new Error(`SoftmaxGrad (wasm): dy [${dy.shape}] and y [${y.shape}] must have one shape of rank >= 1`);
  if (dy.dtype !== 'float32' || y.dtype !== 'float32')
    throw new Error(`SoftmaxGrad (wasm): inputs must be float32, got ${dy.dtype}, ${y.dtype}`);
  const cols = y.shape[y.shape.length - 1]!;
  const dx = backend.makeOutput([...y.shape], 'float32');
  const at = (t: Info) => backend.getMemoryOffset(t.dataId);
  if (cols > 0) k.softmaxGrad(at(dy), at(y), at(dx), tf.util.sizeFromShape(y.shape) / cols, cols);
  return dx;
}

export const softmaxGradConfig: tf.KernelConfig = { kernelName: SOFTMAX_GRAD_KERNEL, backendName: 'wasm', kernelFunc: softmaxGrad };
