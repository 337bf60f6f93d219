import * as tf from '@tensorflow/tfjs';
import { l2Normalize } from './layers.js';

/**
 * The loss terms. Batch-level terms take the GLOBAL batch (every rank's rows, this rank's live)
 * and return the full global loss; per-sample terms take this rank's rows and divide by the global
 * batch size; parameter-only terms divide by the world size. Summing each rank's gradient then
 * gives exactly the gradient of one process on the whole batch (docs/model.md, DESIGN.md).
 */

/** Cosine-similarity logits: exp(logScale) * cos(image, label) + bias, [n, L]. */
export function cosineLogits(imageEmb: tf.Tensor2D, labelEmb: tf.Tensor2D, logScale: tf.Scalar, bias: tf.Tensor1D): tf.Tensor2D {
  const cos = tf.matMul(l2Normalize(imageEmb), l2Normalize(labelEmb), false, true);
  return tf.add(tf.mul(cos, tf.exp(logScale)), bias) as tf.Tensor2D;
}

/**
 * Masked binary cross-entropy with logits, summed over this rank's samples and labels and divided
 * by (global batch size * labels): the global mean once ranks' values are summed.
 * softplus keeps it finite for large |logit|: -log(sigmoid(x)) = softplus(-x).
 */
export function classificationLoss(
  logits: tf.Tensor2D,
  targets: tf.Tensor2D,
  mask: tf.Tensor2D,
  posWeight: tf.Tensor1D | null,
  globalBatch: number,
): tf.Scalar {
  const L = logits.shape[1];
  const posTerm = tf.mul(targets, tf.softplus(tf.neg(logits)));
  const negTerm = tf.mul(tf.sub(1, targets), tf.softplus(logits));
  const bce = tf.add(posWeight ? tf.mul(posTerm, posWeight) : posTerm, negTerm);
  return tf.div(tf.sum(tf.mul(bce, mask)), globalBatch * L) as tf.Scalar;
}

/**
 * An image's text embedding: the mean of its findings' state-prompt embeddings ("Positive X" with
 * weight y, "Negative X" with weight 1 - y, over labels with a target), [n, D]; the contrastive
 * loss normalises it. Soft (smoothed) targets interpolate between the two prompts.
 */
export function sampleTextEmbeddings(positive: tf.Tensor2D, negative: tf.Tensor2D, targets: tf.Tensor2D, mask: tf.Tensor2D): tf.Tensor2D {
  const wPos = tf.mul(targets, mask);
  const wNeg = tf.mul(tf.sub(1, targets), mask);
  const sum = tf.add(tf.matMul(wPos, positive), tf.matMul(wNeg, negative));
  return tf.div(sum, tf.maximum(tf.sum(mask, 1, true), 1)) as tf.Tensor2D;
}

/**
 * Group id per row: rows with identical raw label vectors (NaN equal to NaN) share an id. Used as
 * the soft multi-positive structure of the contrastive targets.
 */
export function labelGroups(labels: Float32Array, n: number, L: number): Int32Array {
  const ids = new Map<string, number>();
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const key = Array.from(labels.subarray(i * L, (i + 1) * L), (y) => (Number.isNaN(y) ? 'n' : String(y))).join(',');
    let id = ids.get(key);
    if (id === undefined) ids.set(key, (id = ids.size));
    out[i] = id;
  }
  return out;
}

/** Row-normalised target matrix G[i][j] = [g_i = g_j] / |group(i)|, [N, N]; symmetric. */
export function multiPositiveTargets(groups: Int32Array): Float32Array {
  const N = groups.length;
  const count = new Map<number, number>();
  for (const g of groups) count.set(g, (count.get(g) ?? 0) + 1);
  const out = new Float32Array(N * N);
  for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) if (groups[i] === groups[j]) out[i * N + j] = 1 / count.get(groups[i]!)!;
  return out;
}

/**
 * Symmetric image<->text InfoNCE over the global batch with soft multi-positive targets:
 * 0.5 * (CE(rows of s*Z T^T, G) + CE(rows of s*T Z^T, G)), averaged over the N rows, with
 * s = min(exp(logitScale), 100) (CLIP's clamp).
 */
export function contrastiveLoss(imageEmb: tf.Tensor2D, textEmb: tf.Tensor2D, targets: tf.Tensor2D, logitScale: tf.Scalar): tf.Scalar {
  const N = imageEmb.shape[0];
  const s = tf.minimum(tf.exp(logitScale), 100);
  const logits = tf.mul(tf.matMul(l2Normalize(imageEmb), l2Normalize(textEmb), false, true), s) as tf.Tensor2D;
  const i2t = tf.neg(tf.sum(tf.mul(targets, tf.logSoftmax(logits, 1))));
  const t2i = tf.neg(tf.sum(tf.mul(targets, tf.logSoftmax(tf.transpose(logits), 1))));
  return tf.div(tf.add(i2t, t2i), 2 * N) as tf.Scalar;
}

/** Every rank's buffer concatenated in rank order, without leaving the tape (a synchronous collective). */
export type GatherRows = (local: Float32Array) => Float32Array;

/**
 * The contrastive term over the global batch, owning its gather the way open_clip's ClipLoss
 * does: it takes this rank's image and text embeddings (taped) and raw labels, all-gathers them in
 * one synchronous collective, and rebuilds the global matrices with this rank's slice live, so the
 * forward runs once and gradients flow only into this rank's rows. The temperature's gradient is
 * scaled by 1/world (every rank computes the whole loss), so the rank sum is exact.
 */
export class ContrastiveLoss {
  private readonly offset: number;
  private readonly N: number;

  constructor(private readonly o: { rank: number; world: number; rowCounts: readonly number[]; gather: GatherRows }) {
    this.offset = o.rowCounts.slice(0, o.rank).reduce((a, b) => a + b, 0);
    this.N = o.rowCounts.reduce((a, b) => a + b, 0);
  }

  /**
   * The global loss from this rank's image [n, Dz] and text [n, Dt] embeddings and raw labels [n*L].
   * `gathered`: every rank's packRows([labels, image, text]) when the caller gathered them before
   * the tape (a backend that cannot read inside it); absent, this gathers them itself.
   */
  forward(
    imageEmb: tf.Tensor2D,
    textEmb: tf.Tensor2D,
    labels: Float32Array,
    logitScale: tf.Scalar,
    gathered?: Float32Array | null,
  ): tf.Scalar {
    const { world, rowCounts } = this.o;
    const L = labels.length / imageEmb.shape[0];
    let Z = imageEmb;
    let T = textEmb;
    let allLabels = labels;
    if (world > 1) {
      const all = gathered ?? this.o.gather(packRows([labels, imageEmb.dataSync() as Float32Array, textEmb.dataSync() as Float32Array]));
      const g = splitRows(all, rowCounts, [L, imageEmb.shape[1], textEmb.shape[1]]);
      allLabels = g[0]!;
      Z = withLiveSlice(g[1]!, imageEmb, this.offset);
      T = withLiveSlice(g[2]!, textEmb, this.offset);
    }
    const G = tf.tensor2d(multiPositiveTargets(labelGroups(allLabels, this.N, L)), [this.N, this.N]);
    return contrastiveLoss(Z, T, G, scaleGradient(logitScale, 1 / world));
  }
}

/**
 * Label prior mean((T T^T - S)^2) over normalised label embeddings T [L, D], divided by the world
 * size because every rank adds it.
 */
export function labelPriorLoss(labelEmb: tf.Tensor2D, target: tf.Tensor2D, world: number): tf.Scalar {
  const t = l2Normalize(labelEmb);
  return tf.div(tf.mean(tf.squaredDifference(tf.matMul(t, t, false, true), target)), world) as tf.Scalar;
}

/**
 * x with its gradient multiplied by k (value unchanged). A parameter that enters a batch-level
 * loss directly (the contrastive temperature) gets the whole global gradient on every rank, so
 * each rank passes it through with k = 1/world and the rank sum is exact again.
 */
export function scaleGradient<T extends tf.Tensor>(x: T, k: number): T {
  if (k === 1) return x;
  const f = tf.customGrad((xIn) => ({ value: tf.clone(xIn as tf.Tensor), gradFunc: (dy: tf.Tensor) => tf.mul(dy, k) }));
  return f(x) as T;
}

/**
 * The global [N, D] matrix with rows [offset, offset + n) live (differentiable) and every other row
 * a constant made from the gathered values: gradients flow only into this rank's slice.
 */
export function withLiveSlice(gathered: Float32Array, live: tf.Tensor2D, offset: number): tf.Tensor2D {
  const [n, D] = live.shape;
  const N = gathered.length / D;
  if (!Number.isInteger(N) || offset < 0 || offset + n > N)
    throw new Error(`withLiveSlice: slice [${offset}, ${offset + n}) outside ${N} rows`);
  const parts: tf.Tensor2D[] = [];
  if (offset > 0) parts.push(tf.tensor2d(gathered.subarray(0, offset * D), [offset, D]));
  parts.push(live);
  if (offset + n < N) parts.push(tf.tensor2d(gathered.subarray((offset + n) * D), [N - offset - n, D]));
  return parts.length === 1 ? live : tf.concat(parts, 0);
}

/**
 * One rank's rows as one buffer: each part is this rank's rows of one width, laid end to end,
 * so that a single all-gather carries them all (one round trip instead of one per part).
 */
export function packRows(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Undoes packRows over the rank-order concatenation of every rank's packed rows (rank r holding
 * sizes[r] rows): part i of the result is [sum(sizes), widths[i]], rows in rank order.
 */
export function splitRows(gathered: Float32Array, sizes: readonly number[], widths: readonly number[]): Float32Array[] {
  const N = sizes.reduce((a, b) => a + b, 0);
  const rowWidth = widths.reduce((a, b) => a + b, 0);
  if (gathered.length !== N * rowWidth) throw new Error(`splitRows: ${gathered.length} values for ${N} rows of width ${rowWidth}`);
  const out = widths.map((wd) => new Float32Array(N * wd));
  let src = 0;
  let row = 0;
  for (const m of sizes) {
    widths.forEach((wd, i) => {
      out[i]!.set(gathered.subarray(src, src + m * wd), row * wd);
      src += m * wd;
    });
    row += m;
  }
  return out;
}
