import * as tf from '@tensorflow/tfjs';
import { attentionHeads, dense, layerNorm, quickGelu, residualMlp, softmax } from './layers.js';
import type { ParamSpec } from './param-specs.js';

/** A parameter by its layout name (CxrModel.p, or any map of tensors with open_clip's names). */
export type ParamGetter = <T extends tf.Tensor = tf.Tensor>(name: string) => T;

/**
 * Multi-head attention's core on the qkv projection [B * T, 3 * W]: softmax(q k^T / sqrt(d) + mask) v
 * with the heads merged back, [B * T, W]. `mask` is added to the scores [B, H, T, T] (broadcast):
 * [T, T] for a causal mask, [B, 1, 1, T] for padded keys.
 */
export function attentionCore(qkv: tf.Tensor2D, B: number, T: number, heads: number, mask?: tf.Tensor): tf.Tensor2D {
  const W = qkv.shape[1] / 3;
  const d = W / heads;
  const [q, k, v] = attentionHeads(qkv, B, heads, d ** -0.5);
  let scores: tf.Tensor3D = tf.matMul(q, k, false, true);
  if (mask) scores = tf.reshape(tf.add(tf.reshape(scores, [B, heads, T, T]), mask), [B * heads, T, T]);
  const ctx = tf.matMul(softmax(scores), v);
  return tf.reshape(tf.transpose(tf.reshape(ctx, [B, heads, T, d]), [0, 2, 1, 3]), [B * T, W]) as tf.Tensor2D;
}

/**
 * open_clip's ResidualAttentionBlock on [B * T, W] rows, parameters `${name}.ln_1`, `.attn.in_proj_*`,
 * `.attn.out_proj.*`, `.ln_2`, `.mlp.c_fc.*`, `.mlp.c_proj.*` (dense kernels [in, out]): pre-norm
 * attention and MLP, each with its residual. The MLP's activation is exact GELU, or QuickGELU;
 * the LayerNorms' eps is open_clip's 1e-5 unless given (timm's ViTs: 1e-6).
 */
export function residualAttentionBlock(
  p: ParamGetter,
  name: string,
  x: tf.Tensor2D,
  B: number,
  T: number,
  heads: number,
  opts: { mask?: tf.Tensor; quickGelu?: boolean; eps?: number } = {},
): tf.Tensor2D {
  const eps = opts.eps ?? 1e-5;
  const a = layerNorm(x, p(`${name}.ln_1.weight`), p(`${name}.ln_1.bias`), eps);
  const qkv = dense(a, p(`${name}.attn.in_proj_weight`), p(`${name}.attn.in_proj_bias`));
  const merged = attentionCore(qkv, B, T, heads, opts.mask);
  // The residual adds and c_fc's GELU go with the dense layers (fused kernels on wasm).
  const x1 = dense(merged, p(`${name}.attn.out_proj.weight`), p(`${name}.attn.out_proj.bias`), { residual: x });
  const m = layerNorm(x1, p(`${name}.ln_2.weight`), p(`${name}.ln_2.bias`), eps);
  if (opts.quickGelu) {
    const h = quickGelu(dense(m, p(`${name}.mlp.c_fc.weight`), p(`${name}.mlp.c_fc.bias`)));
    return dense(h, p(`${name}.mlp.c_proj.weight`), p(`${name}.mlp.c_proj.bias`), { residual: x1 });
  }
  return residualMlp(
    m,
    p(`${name}.mlp.c_fc.weight`),
    p(`${name}.mlp.c_fc.bias`),
    p(`${name}.mlp.c_proj.weight`),
    p(`${name}.mlp.c_proj.bias`),
    x1,
  );
}

/**
 * The parameters of one residualAttentionBlock under `name` (open_clip's names, dense kernels
 * [in, out]). `outStd` null: the output projections start at zero, so the block starts as the
 * identity (the heads on a pretrained tower).
 */
export function residualBlockSpecs(
  name: string,
  width: number,
  mlpWidth: number,
  init: { attnStd: number; fcStd: number; outStd: number | null },
): ParamSpec[] {
  const ones = { value: 1 };
  const zeros = { value: 0 };
  const out = init.outStd === null ? zeros : { std: init.outStd };
  const W = width;
  const M = mlpWidth;
  return [
    { name: `${name}.ln_1.weight`, shape: [W], decay: false, init: ones },
    { name: `${name}.ln_1.bias`, shape: [W], decay: false, init: zeros },
    { name: `${name}.attn.in_proj_weight`, shape: [W, 3 * W], decay: true, init: { std: init.attnStd } },
    { name: `${name}.attn.in_proj_bias`, shape: [3 * W], decay: false, init: zeros },
    { name: `${name}.attn.out_proj.weight`, shape: [W, W], decay: true, init: out },
    { name: `${name}.attn.out_proj.bias`, shape: [W], decay: false, init: zeros },
    { name: `${name}.ln_2.weight`, shape: [W], decay: false, init: ones },
    { name: `${name}.ln_2.bias`, shape: [W], decay: false, init: zeros },
    { name: `${name}.mlp.c_fc.weight`, shape: [W, M], decay: true, init: { std: init.fcStd } },
    { name: `${name}.mlp.c_fc.bias`, shape: [M], decay: false, init: zeros },
    { name: `${name}.mlp.c_proj.weight`, shape: [M, W], decay: true, init: out },
    { name: `${name}.mlp.c_proj.bias`, shape: [W], decay: false, init: zeros },
  ];
}
