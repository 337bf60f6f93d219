import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import { boundFloat32, transposeFor } from './simd-modules.js';
import { wasmKernelsReady, type Info, type KernelArgs } from './wasm-backend.js';

/**
 * The attention's head split on the wasm backend: inputs {x [batch * tokens, 3 * heads * d]} (the
 * qkv projection, q, k, v each heads * d wide), attrs {batch, heads, scale} -> [q * scale, k, v],
 * each [batch * heads, tokens, d]. It is reshape [batch, tokens, 3 * heads, d], transpose
 * [0, 2, 1, 3], split in three on axis 1, reshape, and q times scale (an f32 Multiply), moved in
 * one pass with the same bits. Its gradient (CxrAttentionHeadsGrad: {dq, dk, dv} -> dx) is the
 * reverse, dq times scale, which is what tfjs's Multiply, Concat and Transpose gradients compute.
 * Only model/layers.ts calls it, after wasmAttentionHeadsActive() said yes.
 */
export const ATTENTION_HEADS_KERNELS = { split: 'CxrAttentionHeads', merge: 'CxrAttentionHeadsGrad' } as const;

interface HeadsAttrs {
  batch: number;
  heads: number;
  scale: number;
}

/** Whether layers.ts's attentionHeads runs on the fused kernels now (wasm, SIMD, option on). */
export function wasmAttentionHeadsActive(): boolean {
  return kernelOptions().attentionHeads && wasmKernelsReady([ATTENTION_HEADS_KERNELS.split], transposeFor);
}

/** [batch, tokens, heads, d] of the qkv projection `x` [batch * tokens, 3 * heads * d], or an error naming what does not fit. */
function headsGeometry(x: readonly number[], { batch, heads }: HeadsAttrs): [number, number, number, number] {
  const [rows, cols] = x;
  if (x.length !== 2 || !(batch > 0) || !(heads > 0) || rows! % batch !== 0 || cols! % (3 * heads) !== 0) {
    throw new Error(`AttentionHeads (wasm): x [${x}] is not [batch * tokens, 3 * heads * d] for batch ${batch}, heads ${heads}`);
  }
  return [batch, rows! / batch, heads, cols! / (3 * heads)];
}

function boundHeads(args: KernelArgs) {
  return boundFloat32(args, transposeFor, {
    cannotRun: 'the attention head kernels cannot run on this engine (check wasmAttentionHeadsActive() first)',
    inputs: 'AttentionHeads (wasm)',
  });
}

function attentionHeads(args: KernelArgs): Info[] {
  const { k, backend, at } = boundHeads(args);
  const { x } = args.inputs as { x: Info };
  const attrs = args.attrs as unknown as HeadsAttrs;
  const [b, t, h, d] = headsGeometry(x.shape, attrs);
  const outs = [0, 1, 2].map(() => backend.makeOutput([b * h, t, d], 'float32'));
  if (b * t * h * d === 0) return outs;
  // Output rows (batch o, head a, token c) of d values, from input row (o, c) at column (piece, a).
  const strides = [t * 3 * h * d * 4, d * 4, 3 * h * d * 4, h * t * d * 4, t * d * 4, d * 4] as const;
  outs.forEach((out, piece) => {
    const src = at(x) + piece * h * d * 4;
    if (piece === 0) k.rowsScaled(src, at(out), b, h, t, d, ...strides, attrs.scale);
    else k.rows(src, at(out), b, h, t, d, ...strides);
  });
  return outs;
}

function attentionHeadsGrad(args: KernelArgs): Info {
  const { k, backend, at } = boundHeads(args);
  const { dq, dk, dv } = args.inputs as { dq: Info; dk: Info; dv: Info };
  const attrs = args.attrs as unknown as HeadsAttrs;
  const { batch, heads } = attrs;
  const [tokens, d] = [dq.shape[1]!, dq.shape[2]!];
  for (const g of [dq, dk, dv]) {
    if (!tf.util.arraysEqual(g.shape, [batch * heads, tokens, d]))
      throw new Error(`AttentionHeadsGrad (wasm): dq, dk, dv must be [${batch * heads},${tokens},${d}], got [${g.shape}]`);
  }
  const dx = backend.makeOutput([batch * tokens, 3 * heads * d], 'float32');
  if (batch * tokens * heads * d === 0) return dx;
  // Output rows (batch o, token a, head c) at column (piece, c), from input row (o, c, a).
  const strides = [heads * tokens * d * 4, d * 4, tokens * d * 4, tokens * 3 * heads * d * 4, 3 * heads * d * 4, d * 4] as const;
  [dq, dk, dv].forEach((g, piece) => {
    const dst = at(dx) + piece * heads * d * 4;
    if (piece === 0) k.rowsScaled(at(g), dst, batch, tokens, heads, d, ...strides, attrs.scale);
    else k.rows(at(g), dst, batch, tokens, heads, d, ...strides);
  });
  return dx;
}

export const attentionHeadsConfig: tf.KernelConfig = {
  kernelName: ATTENTION_HEADS_KERNELS.split,
  backendName: 'wasm',
  kernelFunc: attentionHeads,
};
export const attentionHeadsGradConfig: tf.KernelConfig = {
  kernelName: ATTENTION_HEADS_KERNELS.merge,
  backendName: 'wasm',
  kernelFunc: attentionHeadsGrad,
};

/** The split's gradient is the merge, with the same attrs. */
export const attentionHeadsGradient: tf.GradConfig = {
  kernelName: ATTENTION_HEADS_KERNELS.split,
  gradFunc: (dy, _saved, attrs) => {
    const [dq, dk, dv] = dy as tf.Tensor[];
    return {
      x: () =>
        tf
          .engine()
          .runKernel(ATTENTION_HEADS_KERNELS.merge, { dq: dq!, dk: dk!, dv: dv! }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor,
    };
  },
};
