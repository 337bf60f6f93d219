import * as tf from '@tensorflow/tfjs';
import { attentionCore, type ParamGetter } from '../blocks.js';
import { dense, gelu, layerNorm, residualMlp } from '../layers.js';
import type { ParamSpec } from '../param-specs.js';

/** open_clip's HFTextEncoder readouts for BERT (`text_cfg.hf_pooler_type`). */
export type BertPooler = 'cls_pooler' | 'cls_last_hidden_state_pooler' | 'mean_pooler';
export const BERT_POOLERS: readonly BertPooler[] = ['cls_pooler', 'cls_last_hidden_state_pooler', 'mean_pooler'];
/** open_clip's HFTextEncoder projections (`text_cfg.hf_proj_type`; `none` where width = embed_dim and none is named). */
export type BertProj = 'linear' | 'mlp' | 'none';

/**
 * open_clip's HFTextEncoder over a BERT model (BiomedCLIP's PubMedBERT): BERT embeddings and
 * post-norm encoder layers as Hugging Face's BertModel, then the pooler and projection the config
 * names. Tensors are `text.transformer.*` (the BertModel) and `text.proj.*`.
 */
export interface BertTextShape {
  kind: 'bert';
  vocabSize: number;
  /** open_clip's context length (`text_cfg.context_length`, 256 in BiomedCLIP): the tokenizer's padded length. */
  contextLength: number;
  /** max_position_embeddings: rows of the position table (>= contextLength). */
  maxPositions: number;
  typeVocabSize: number;
  width: number;
  heads: number;
  layers: number;
  /** intermediate_size of the MLPs. */
  intermediate: number;
  /** layer_norm_eps (1e-12 for BERT). */
  eps: number;
  /** pad_token_id: keys with this id are masked, as HFTextEncoder's attention mask does. */
  padId: number;
  embedDim: number;
  pooler: BertPooler;
  proj: BertProj;
}

const T_ = 'text.transformer.';

/** The proj MLP's hidden width, open_clip's (d_model + output_dim) // 2. */
export function bertProjHidden(s: BertTextShape): number {
  return Math.floor((s.width + s.embedDim) / 2);
}

/** The tower's parameters in open_clip's (Hugging Face's) names, dense kernels [in, out], BERT's init (std 0.02). */
export function bertTextSpecs(s: BertTextShape): ParamSpec[] {
  const W = s.width;
  const out: ParamSpec[] = [];
  const p = (name: string, shape: number[], decay: boolean, init: ParamSpec['init']) => out.push({ name, shape, decay, init });
  const ones = { value: 1 };
  const zeros = { value: 0 };
  const std = { std: 0.02 };
  const e = `${T_}embeddings`;
  p(`${e}.word_embeddings.weight`, [s.vocabSize, W], false, std);
  p(`${e}.position_embeddings.weight`, [s.maxPositions, W], false, std);
  p(`${e}.token_type_embeddings.weight`, [s.typeVocabSize, W], false, std);
  p(`${e}.LayerNorm.weight`, [W], false, ones);
  p(`${e}.LayerNorm.bias`, [W], false, zeros);
  for (let i = 0; i < s.layers; i++) {
    const b = `${T_}encoder.layer.${i}`;
    for (const qkv of ['query', 'key', 'value']) {
      p(`${b}.attention.self.${qkv}.weight`, [W, W], true, std);
      p(`${b}.attention.self.${qkv}.bias`, [W], false, zeros);
    }
    p(`${b}.attention.output.dense.weight`, [W, W], true, std);
    p(`${b}.attention.output.dense.bias`, [W], false, zeros);
    p(`${b}.attention.output.LayerNorm.weight`, [W], false, ones);
    p(`${b}.attention.output.LayerNorm.bias`, [W], false, zeros);
    p(`${b}.intermediate.dense.weight`, [W, s.intermediate], true, std);
    p(`${b}.intermediate.dense.bias`, [s.intermediate], false, zeros);
    p(`${b}.output.dense.weight`, [s.intermediate, W], true, std);
    p(`${b}.output.dense.bias`, [W], false, zeros);
    p(`${b}.output.LayerNorm.weight`, [W], false, ones);
    p(`${b}.output.LayerNorm.bias`, [W], false, zeros);
  }
  if (s.pooler === 'cls_pooler') {
    p(`${T_}pooler.dense.weight`, [W, W], true, std);
    p(`${T_}pooler.dense.bias`, [W], false, zeros);
  }
  if (s.proj === 'linear') p('text.proj.weight', [W, s.embedDim], true, { std: W ** -0.5 });
  if (s.proj === 'mlp') {
    const hid = bertProjHidden(s);
    p('text.proj.0.weight', [W, hid], true, { std: W ** -0.5 });
    p('text.proj.2.weight', [hid, s.embedDim], true, { std: hid ** -0.5 });
  }
  return out;
}

/**
 * Text embeddings [N, embed_dim] (not normalised) of N token rows of equal length T <= contextLength
 * ([CLS], tokens, [SEP], padding). Padded keys are masked, so rows may be cut to the longest of
 * them: the result is the one open_clip computes at the full context, to rounding.
 */
export function encodeBertText(p: ParamGetter, s: BertTextShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  return bertTextReadout(p, s, ids, bertTextStates(p, s, ids));
}

/** Hugging Face's extended attention mask [N, 1, 1, T]: the dtype's lowest value added to padded keys' scores. */
export function bertPadMask(s: BertTextShape, ids: readonly (readonly number[])[]): tf.Tensor4D {
  return tf.tensor4d(
    ids.flat().map((id) => (id === s.padId ? -3.4028234663852886e38 : 0)),
    [ids.length, 1, 1, ids[0]!.length],
  );
}

/** The token states [N * T, W] after the last encoder layer (what a text head's blocks attend over). */
export function bertTextStates(p: ParamGetter, s: BertTextShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  const N = ids.length;
  const T = ids[0]?.length ?? 0;
  if (N === 0 || T === 0 || T > s.contextLength || ids.some((r) => r.length !== T))
    throw new Error(`encodeBertText: ${N} token rows must all have one length in 1..${s.contextLength}`);
  const W = s.width;
  const e = `${T_}embeddings`;
  const words = tf.reshape(tf.gather(p<tf.Tensor2D>(`${e}.word_embeddings.weight`), tf.tensor1d(ids.flat(), 'int32')), [N, T, W]);
  const pos = tf.slice(p<tf.Tensor2D>(`${e}.position_embeddings.weight`), [0, 0], [T, W]);
  const type0 = tf.slice(p<tf.Tensor2D>(`${e}.token_type_embeddings.weight`), [0, 0], [1, W]);
  const summed = tf.reshape(tf.add(tf.add(words, pos), type0), [N * T, W]) as tf.Tensor2D;
  let h = layerNorm(summed, p(`${e}.LayerNorm.weight`), p(`${e}.LayerNorm.bias`), s.eps);
  const mask = bertPadMask(s, ids);
  for (let i = 0; i < s.layers; i++) h = tf.tidy(() => bertLayer(p, `${T_}encoder.layer.${i}`, h, N, T, s, mask));
  return h;
}

/** The pooler and projection the config names, on the token states [N * T, W]. */
export function bertTextReadout(p: ParamGetter, s: BertTextShape, ids: readonly (readonly number[])[], h: tf.Tensor2D): tf.Tensor2D {
  const N = ids.length;
  const T = ids[0]!.length;
  const W = s.width;
  const rows = tf.reshape(h, [N, T, W]);
  let pooled: tf.Tensor2D;
  if (s.pooler === 'mean_pooler') {
    const m = tf.tensor3d(
      ids.flat().map((id) => (id === s.padId ? 0 : 1)),
      [N, T, 1],
    );
    pooled = tf.div(tf.sum(tf.mul(rows, m), 1), tf.sum(m, 1)) as tf.Tensor2D;
  } else {
    pooled = tf.reshape(tf.slice(rows, [0, 0, 0], [N, 1, W]), [N, W]) as tf.Tensor2D;
    if (s.pooler === 'cls_pooler') pooled = tf.tanh(dense(pooled, p(`${T_}pooler.dense.weight`), p(`${T_}pooler.dense.bias`)));
  }
  if (s.proj === 'linear') return tf.matMul(pooled, p<tf.Tensor2D>('text.proj.weight'));
  if (s.proj === 'mlp')
    return tf.matMul(gelu(tf.matMul(pooled, p<tf.Tensor2D>('text.proj.0.weight'))), p<tf.Tensor2D>('text.proj.2.weight'));
  return pooled;
}

/** One BertLayer: attention, residual, LayerNorm; intermediate (exact GELU), output, residual, LayerNorm. */
function bertLayer(p: ParamGetter, b: string, x: tf.Tensor2D, N: number, T: number, s: BertTextShape, mask: tf.Tensor): tf.Tensor2D {
  const a = `${b}.attention`;
  // q, k and v as one product with the kernels side by side, the layout attentionCore takes.
  const w = tf.concat(
    ['query', 'key', 'value'].map((k) => p<tf.Tensor2D>(`${a}.self.${k}.weight`)),
    1,
  );
  const bias = tf.concat(['query', 'key', 'value'].map((k) => p<tf.Tensor1D>(`${a}.self.${k}.bias`)));
  const ctx = attentionCore(dense(x, w, bias), N, T, s.heads, mask);
  const attended = dense(ctx, p(`${a}.output.dense.weight`), p(`${a}.output.dense.bias`), { residual: x });
  const x1 = layerNorm(attended, p(`${a}.output.LayerNorm.weight`), p(`${a}.output.LayerNorm.bias`), s.eps);
  const y = residualMlp(
    x1,
    p(`${b}.intermediate.dense.weight`),
    p(`${b}.intermediate.dense.bias`),
    p(`${b}.output.dense.weight`),
    p(`${b}.output.dense.bias`),
    x1,
  );
  return layerNorm(y, p(`${b}.output.LayerNorm.weight`), p(`${b}.output.LayerNorm.bias`), s.eps);
}
