import * as tf from '@tensorflow/tfjs';
import { attentionHeadsConfig, attentionHeadsGradConfig, attentionHeadsGradient } from './attention-heads.js';
import { batchMatMulConfig } from './batch-mat-mul.js';
import { conv2DBackpropFilterConfig } from './conv2d-backprop-filter.js';
import { denseConfig } from './dense.js';
import { geluConfig, geluGradConfig } from './gelu.js';
import { identityConfig } from './identity.js';
import { layerNormConfig, layerNormGradConfig } from './layer-norm.js';
import { matMulMulConfig } from './matmul-mul.js';
import { softmaxGradConfig } from './softmax-grad.js';
import { splitVConfig } from './split-v.js';
import { sumConfig } from './sum.js';
import { transposeConfig } from './transpose.js';
import { unsortedSegmentSumConfig } from './unsorted-segment-sum.js';
import type { WrappingKernelConfig } from './wasm-backend.js';

/**
 * Every kernel this project gives tfjs-backend-wasm 4.22, one list as the backend keeps its own.
 * Added: gradients it does not ship (Conv2DBackpropFilter, UnsortedSegmentSum, built from kernels
 * it does) and this project's fused kernels, which model/layers.ts calls by name.
 */
const added: readonly tf.KernelConfig[] = [
  conv2DBackpropFilterConfig,
  unsortedSegmentSumConfig,
  layerNormConfig,
  layerNormGradConfig,
  geluConfig,
  geluGradConfig,
  denseConfig,
  matMulMulConfig,
  softmaxGradConfig,
  attentionHeadsConfig,
  attentionHeadsGradConfig,
];

const gradients: readonly tf.GradConfig[] = [attentionHeadsGradient];

/** Replaced: each wraps the backend's own kernel, which stays its fallback. */
const wrapped: readonly WrappingKernelConfig[] = [identityConfig, sumConfig, splitVConfig, transposeConfig, batchMatMulConfig];

let registered = false;

/** Register the kernels on the wasm backend (idempotent; a kernel wasm itself gains later wins). */
export function registerWasmGradientKernels(): void {
  if (registered) return;
  registered = true;
  for (const config of added) if (!tf.getKernel(config.kernelName, 'wasm')) tf.registerKernel(config);
  for (const config of gradients) tf.registerGradient(config);
  for (const { kernelName, wrap } of wrapped) {
    const own = tf.getKernel(kernelName, 'wasm');
    if (!own) continue;
    tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: wrap(own.kernelFunc) });
  }
}
