import * as tf from '@tensorflow/tfjs';
import { l2Normalize } from './layers.js';
import { type CxrModel, LOGIT_SCALE_MAX } from './vit.js';

/**
 * Zero-shot scoring as CheXzero does it: label l of an image scores
 * p_l = exp(s+) / (exp(s+) + exp(s-)), s+- = scale x cos(image embedding, "Positive/Negative <label>"),
 * the softmax over the label's two state prompts; no classifier is trained.
 */

/**
 * Where the prompt embeddings come from: `tower`, the text tower's output as it is (a pretrained
 * directory, its heads bypassed: they are untrained there); `heads`, a trained run's own prompt
 * embeddings through its text head (encodeText), to set beside the run's classifier.
 */
export type PromptSource = 'tower' | 'heads';

export interface PromptPairs {
  /** Unit "Positive <label>" and "Negative <label>" embeddings [L, D]. */
  readonly positive: tf.Tensor2D;
  readonly negative: tf.Tensor2D;
  /** exp(logit_scale) clamped at 100, the contrastive temperature as training uses it. */
  readonly scale: number;
  dispose(): void;
}

/** The model's Positive/Negative prompt pairs, computed once for a whole split. */
export async function promptPairs(model: CxrModel, source: PromptSource): Promise<PromptPairs> {
  const c = model.config;
  const L = c.labels.length;
  if (c.head !== 'text') throw new Error('zero-shot: the linear head has no label prompts');
  if (source === 'tower' && c.text.kind === 'learnable') throw new Error('zero-shot: learnable prompt vectors are no text tower');
  // A transformer text head runs inside the tower (before its readout): no head-free prompts there.
  if (source === 'tower' && c.textHead === 'transformer')
    throw new Error('zero-shot: the transformer text head is inside the tower output');
  if (source === 'tower' && c.text.dim !== c.embedDim)
    throw new Error(`zero-shot: prompt embeddings of dimension ${c.text.dim} against image embeddings of ${c.embedDim}`);
  const stateRows = (): tf.Tensor2D[] => {
    if (source === 'tower') return tf.split<tf.Tensor2D>(model.promptEmbeddings(), [L, L, L], 0).slice(1);
    const t = model.encodeText();
    return [t.positive, t.negative];
  };
  const [positive, negative, scale] = tf.tidy(() => {
    const [pos, neg] = stateRows();
    return [l2Normalize(pos!), l2Normalize(neg!), tf.minimum(tf.exp(model.p('logit_scale')), LOGIT_SCALE_MAX)] as const;
  });
  // Read with await: WebGPU has no synchronous read in Node.
  const s = (await scale.data())[0]!;
  scale.dispose();
  return {
    positive,
    negative,
    scale: s,
    dispose: () => {
      positive.dispose();
      negative.dispose();
    },
  };
}

/**
 * Per-label log-odds [n, L] of the prompt softmax, s+ - s- = log(p / (1 - p)). Evaluation ranks by
 * these as it ranks a classifier by its logits: the same order as p, which float32 rounds to exactly
 * 1 (ties) once a label's two prompts are far apart (s+ - s- above about 17).
 */
export function promptLogits(z: tf.Tensor2D, pairs: PromptPairs): tf.Tensor2D {
  return tf.tidy(() => {
    const u = l2Normalize(z);
    const sPos = tf.matMul(u, pairs.positive, false, true);
    const sNeg = tf.matMul(u, pairs.negative, false, true);
    return tf.mul(tf.sub(sPos, sNeg), pairs.scale) as tf.Tensor2D;
  });
}

/** Per-label zero-shot probabilities [n, L]: the softmax over two logits is the sigmoid of their difference. */
export function promptSoftmax(z: tf.Tensor2D, pairs: PromptPairs): tf.Tensor2D {
  return tf.tidy(() => tf.sigmoid(promptLogits(z, pairs)));
}
