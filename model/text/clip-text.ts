import * as tf from '@tensorflow/tfjs';
import { type ParamGetter, residualAttentionBlock, residualBlockSpecs } from '../blocks.js';
import { layerNorm } from '../layers.js';
import type { ParamSpec } from '../param-specs.js';

/**
 * open_clip's TextTransformer (CLIP's text tower) with the defaults every CLIP checkpoint uses:
 * causal attention, no class token, pooling at the end-of-text token (`text_pool_type='argmax'`:
 * the eot token has the highest id), `text_projection` a [width, embed_dim] matrix.
 */
export interface ClipTextShape {
  kind: 'clip';
  vocabSize: number;
  /** Rows of positional_embedding (77 for CLIP). */
  contextLength: number;
  width: number;
  heads: number;
  layers: number;
  embedDim: number;
  /** QuickGELU in the MLPs (OpenAI's weights, open_clip `quick_gelu`) instead of exact GELU. */
  quickGelu: boolean;
  /**
   * Name prefix: '' in open_clip's CLIP class, where the text tower's tensors are top-level
   * (`token_embedding.weight`, `transformer.resblocks.N.*`), 'text.' in CustomTextCLIP.
   */
  prefix: '' | 'text.';
}

/** The tower's parameters in open_clip's names (dense kernels [in, out]) with open_clip's initialisation. */
export function clipTextSpecs(s: ClipTextShape): ParamSpec[] {
  const W = s.width;
  const n = (x: string) => s.prefix + x;
  const attnStd = W ** -0.5;
  const projStd = W ** -0.5 * (2 * s.layers) ** -0.5;
  const fcStd = (2 * W) ** -0.5;
  const out: ParamSpec[] = [];
  const p = (name: string, shape: number[], decay: boolean, init: ParamSpec['init']) => out.push({ name: n(name), shape, decay, init });
  const ones = { value: 1 };
  const zeros = { value: 0 };
  p('token_embedding.weight', [s.vocabSize, W], false, { std: 0.02 });
  p('positional_embedding', [s.contextLength, W], false, { std: 0.01 });
  for (let i = 0; i < s.layers; i++)
    out.push(...residualBlockSpecs(n(`transformer.resblocks.${i}`), W, 4 * W, { attnStd, fcStd, outStd: projStd }));
  p('ln_final.weight', [W], false, ones);
  p('ln_final.bias', [W], false, zeros);
  p('text_projection', [W, s.embedDim], true, { std: W ** -0.5 });
  return out;
}

/**
 * Text embeddings [N, embed_dim] (not normalised) of N token rows of equal length T <= contextLength
 * (start-of-text, tokens, end-of-text, zero padding). Only positions up to each row's eot token
 * reach its output (causal mask), so rows may be cut to the longest of them: the result is the
 * one open_clip computes at context 77, to rounding.
 */
export function encodeClipText(p: ParamGetter, s: ClipTextShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  return clipTextReadout(p, s, ids, clipTextStates(p, s, ids));
}

/** The token states [N * T, W] after the last block (what a text head's blocks attend over). */
export function clipTextStates(p: ParamGetter, s: ClipTextShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  const N = ids.length;
  const T = ids[0]?.length ?? 0;
  if (N === 0 || T === 0 || T > s.contextLength || ids.some((r) => r.length !== T))
    throw new Error(`encodeClipText: ${N} token rows must all have one length in 1..${s.contextLength}`);
  const W = s.width;
  const n = (x: string) => s.prefix + x;
  const flat = tf.tensor1d(ids.flat(), 'int32');
  const tokens = tf.gather(p<tf.Tensor2D>(n('token_embedding.weight')), flat);
  const pos = tf.slice(p<tf.Tensor2D>(n('positional_embedding')), [0, 0], [T, W]);
  let h = tf.reshape(tf.add(tf.reshape(tokens, [N, T, W]), pos), [N * T, W]) as tf.Tensor2D;
  const mask = causalMask(T);
  for (let i = 0; i < s.layers; i++)
    h = tf.tidy(() => residualAttentionBlock(p, n(`transformer.resblocks.${i}`), h, N, T, s.heads, { mask, quickGelu: s.quickGelu }));
  return h;
}

/** ln_final, pooling at the end-of-text token and text_projection of the token states [N * T, W]. */
export function clipTextReadout(p: ParamGetter, s: ClipTextShape, ids: readonly (readonly number[])[], h: tf.Tensor2D): tf.Tensor2D {
  const n = (x: string) => s.prefix + x;
  const T = ids[0]!.length;
  // The eot row of each sequence (torch's argmax: the first position of the highest id), then
  // ln_final on those rows only (it is per row).
  const at = ids.map((r, k) => k * T + r.indexOf(Math.max(...r)));
  const pooled = tf.gather(h, tf.tensor1d(at, 'int32'));
  const normed = layerNorm(pooled, p(n('ln_final.weight')), p(n('ln_final.bias')));
  return tf.matMul(normed, p<tf.Tensor2D>(n('text_projection')));
}

/** The additive causal mask [T, T]: 0 on and below the diagonal, -inf above (open_clip's build_causal_mask). */
export function causalMask(T: number): tf.Tensor2D {
  const m = new Float32Array(T * T);
  for (let i = 0; i < T; i++) m.fill(Number.NEGATIVE_INFINITY, i * T + i + 1, (i + 1) * T);
  return tf.tensor2d(m, [T, T]);
}
