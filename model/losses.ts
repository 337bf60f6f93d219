import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import type { LabelSet } from '../shared/labels.js';
import { keyedUniform } from '../shared/random/generators.js';
import { l2Normalize } from './layers.js';

/**
 * The loss terms. Batch-level terms take the GLOBAL batch (every rank's rows, this rank's live)
 * and return the full global loss; per-sample terms take this rank's rows and divide by the global
 * batch size; parameter-only terms divide by the world size. Summing each rank's gradient then
 * gives exactly the gradient of one process on the whole batch (docs/model.md, DESIGN.md).
 */

export const UNCERTAINTY_POLICIES = ['ignore', 'zeros', 'ones', 'lsr-ones', 'lsr-zeros'] as const;
export type UncertaintyPolicy = (typeof UNCERTAINTY_POLICIES)[number];
export type BlankPolicy = 'mask' | 'zeros';

export interface TargetOptions {
  /** One policy per label, for labels equal to -1 (uncertain). */
  uncertainty: UncertaintyPolicy[];
  /** Blank (NaN, "not mentioned") labels: masked out, or negative. */
  blank: BlankPolicy;
  seed: number;
}

/** Label-smoothing ranges of Pham et al.: uncertain-as-positive ~ U(0.55, 0.85), as-negative ~ U(0, 0.3). */
export const LSR_ONES: readonly [number, number] = [0.55, 0.85];
export const LSR_ZEROS: readonly [number, number] = [0, 0.3];

/**
 * Classification targets and mask for n samples from raw labels (1, 0, -1, NaN). Smoothed
 * targets are drawn from a hash of (seed, epoch, dataset index, label), not from a stream, so a
 * sample gets the same target whatever its position in the batch and whichever rank holds it.
 */
export function resolveTargets(
  labels: Float32Array,
  n: number,
  L: number,
  opts: TargetOptions,
  sampleKeys: readonly number[],
  epoch: number,
): { targets: Float32Array; mask: Float32Array } {
  const targets = new Float32Array(n * L);
  const mask = new Float32Array(n * L);
  for (let i = 0; i < n; i++) {
    for (let l = 0; l < L; l++) {
      const k = i * L + l;
      const y = labels[k]!;
      if (Number.isNaN(y)) {
        if (opts.blank === 'zeros') mask[k] = 1;
        continue;
      }
      if (y === 1 || y === 0) {
        targets[k] = y;
        mask[k] = 1;
        continue;
      }
      const policy = opts.uncertainty[l]!;
      if (policy === 'ignore') continue;
      mask[k] = 1;
      if (policy === 'ones') targets[k] = 1;
      else if (policy === 'zeros') targets[k] = 0;
      else {
        const [lo, hi] = policy === 'lsr-ones' ? LSR_ONES : LSR_ZEROS;
        targets[k] = lo + (hi - lo) * keyedUniform(opts.seed, epoch, sampleKeys[i]!, l);
      }
    }
  }
  return { targets, mask };
}

/**
 * Per-label uncertainty policies from a default and `Label=policy` overrides.
 */
export function uncertaintyPolicies(labels: readonly string[], dflt: string, overrides: readonly string[]): UncertaintyPolicy[] {
  const check = (p: string, where: string): UncertaintyPolicy => {
    if (!(UNCERTAINTY_POLICIES as readonly string[]).includes(p))
      throw new UserError(`${where}: '${p}' is not an uncertainty policy (${UNCERTAINTY_POLICIES.join(', ')})`);
    return p as UncertaintyPolicy;
  };
  const out = labels.map(() => check(dflt, '--uncertainty'));
  for (const o of overrides) {
    const eq = o.lastIndexOf('=');
    if (eq <= 0) throw new UserError(`--uncertainty-label '${o}': expected LABEL=POLICY, e.g. Atelectasis=lsr-ones`);
    const name = o.slice(0, eq);
    const l = labels.indexOf(name);
    if (l < 0) throw new UserError(`--uncertainty-label '${o}': no label '${name}' (labels: ${labels.join(', ')})`);
    out[l] = check(o.slice(eq + 1), `--uncertainty-label '${o}'`);
  }
  return out;
}

/** Positive weights neg/pos per label from training labels, clamped to [1, max]; 1 where a class is absent. */
export function balancedPosWeights(labels: Float32Array, L: number, max = 50): Float32Array {
  const pos = new Float64Array(L);
  const neg = new Float64Array(L);
  for (let k = 0; k < labels.length; k++) {
    const y = labels[k]!;
    if (y === 1) pos[k % L]++;
    else if (y === 0) neg[k % L]++;
  }
  return Float32Array.from({ length: L }, (_, l) => (pos[l]! > 0 && neg[l]! > 0 ? Math.min(max, Math.max(1, neg[l]! / pos[l]!)) : 1));
}

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

/**
 * Label prior mean((T T^T - S)^2) over normalised label embeddings T [L, D], divided by the world
 * size because every rank adds it.
 */
export function labelPriorLoss(labelEmb: tf.Tensor2D, target: tf.Tensor2D, world: number): tf.Scalar {
  const t = l2Normalize(labelEmb);
  return tf.div(tf.mean(tf.squaredDifference(tf.matMul(t, t, false, true), target)), world) as tf.Scalar;
}

export type LabelPriorKind = 'orth' | 'graph';

/**
 * Target similarity S for the label prior. `orth`: the identity. `graph`: S_ii = 1 and
 * S_ij = 0.5^d(i, j) where d is the shortest-path length between i and j in the undirected label
 * graph whose edges are the hierarchy's parent-child edges plus every pair inside a group; labels
 * with no path between them get 0. So a parent and child (Lung Opacity, Edema) or two pleural
 * findings target cosine 0.5, two children of one parent 0.25, unrelated findings 0.
 */
export function labelPriorTarget(kind: LabelPriorKind, labels: readonly string[], set: LabelSet | null): Float32Array {
  const L = labels.length;
  const S = new Float32Array(L * L);
  for (let i = 0; i < L; i++) S[i * L + i] = 1;
  if (kind === 'orth') return S;
  if (!set)
    throw new UserError(
      "--label-prior graph: the dataset's labels are not a known label set, so there is no label graph; use --label-prior orth",
    );
  const idx = new Map(labels.map((n, i) => [n, i]));
  const adj: number[][] = labels.map(() => []);
  const link = (a: string, b: string) => {
    const i = idx.get(a);
    const j = idx.get(b);
    if (i === undefined || j === undefined || i === j) return;
    adj[i]!.push(j);
    adj[j]!.push(i);
  };
  for (const [p, c] of set.edges) link(p, c);
  for (const members of Object.values(set.groups)) for (const a of members) for (const b of members) link(a, b);
  for (let s = 0; s < L; s++) {
    const dist = new Array<number>(L).fill(-1);
    dist[s] = 0;
    const queue = [s];
    for (let q = 0; q < queue.length; q++) {
      const u = queue[q]!;
      for (const w of adj[u]!)
        if (dist[w] === -1) {
          dist[w] = dist[u]! + 1;
          queue.push(w);
        }
    }
    for (let t = 0; t < L; t++) if (t !== s && dist[t]! > 0) S[s * L + t] = 0.5 ** dist[t]!;
  }
  return S;
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
