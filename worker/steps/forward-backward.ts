import * as tf from '@tensorflow/tfjs';
import type { CxrModel } from '../../model/vit.js';
import { classificationLoss, ContrastiveLoss, packRows, sampleTextEmbeddings } from '../../model/losses.js';
import { scopedPriorLoss, type PriorScope } from '../../model/prior-scope.js';
import { resolveTargets, type TargetOptions } from '../../model/targets.js';
import { readsSynchronously } from '../../model/tensor-storage.js';
import { releasingBackward } from '../../model/backward-release.js';

/**
 * The collectives one training step needs. `allGather` concatenates every rank's buffer in rank
 * order (buffers may differ in length); `allGatherSync` does the same without returning to the
 * event loop (the step calls it inside the tape, which cannot span an await); `allReduceSum` sums
 * in place with a fixed order so that every rank gets the same bytes. World 1 is `localComm`; the
 * train step plugs in ZeroMQ through its comm thread (worker/collectives/threaded-group.ts).
 */
export interface StepComm {
  rank: number;
  world: number;
  /**
   * Rows of the global batch on each rank, when the caller knows them (the data-parallel trainer
   * cuts every global batch with shardRange): saves a collective per step. Absent: gathered.
   */
  rowCounts?: readonly number[];
  allGather(local: Float32Array): Promise<Float32Array>;
  allGatherSync(local: Float32Array): Float32Array;
  allReduceSum(buf: Float32Array): Promise<void>;
}

export const localComm: StepComm = {
  rank: 0,
  world: 1,
  allGather: async (local) => local,
  allGatherSync: (local) => local,
  allReduceSum: async () => {},
};

export interface LossWeights {
  classification: number;
  contrastive: number;
  labelPrior: number;
}

export interface StepOptions {
  weights: LossWeights;
  targets: TargetOptions;
  /** Per-label positive weights, or null for none. */
  posWeight: Float32Array | null;
  /** Label-prior target S [L*L] of the names (used when weights.labelPrior > 0 and the scope has names). */
  priorTarget: Float32Array;
  /** Which prompts the label prior covers (model/prior-scope.ts); absent: names. */
  priorScope?: PriorScope;
  /**
   * The variables to differentiate, in layout order (--freeze leaves the frozen ones out: no
   * backward pass into them, and the flat gradient is their packed vector, shared/trainable.ts); absent: all.
   */
  trainable?: tf.Variable[];
}

/** This rank's slice of a global batch. */
export interface LocalBatch {
  n: number;
  images: Uint8Array;
  /** Raw labels n*L: 1, 0, -1, NaN. */
  labels: Float32Array;
  /** Dataset indices of the samples (keys of the label-smoothing draws). */
  indices: readonly number[];
  epoch: number;
}

export interface StepTerms {
  /** This rank's share of each term: summing over ranks gives the global value. */
  classification: number;
  contrastive: number;
  labelPrior: number;
  total: number;
}

export interface Gradients {
  /**
   * Gradient of the global loss (flat layout, or packed over `trainable` when given): summed over
   * ranks, or this rank's part with `reduce` false.
   */
  grads: Float32Array;
  terms: StepTerms;
  globalBatch: number;
}

/**
 * Forward and backward for one global batch, with gradients summed over ranks.
 *
 * With more than one rank and the contrastive term on, the loss needs every rank's embeddings:
 * inside the tape, this rank's image and text embeddings are read out and all-gathered with its
 * labels in one synchronous collective, and the global matrices are built with this rank's slice
 * live (the taped tensors), so the forward runs once.
 *
 * `into` (the gradient's size), when given, receives the flat gradient and is returned as `grads`:
 * a step that reuses one vector across steps makes no model-sized garbage per step.
 */
export async function computeGradients(
  model: CxrModel,
  batch: LocalBatch,
  comm: StepComm,
  opts: StepOptions,
  reduce = true,
  into?: Float32Array,
): Promise<Gradients> {
  const L = model.config.labels.length;
  const { n } = batch;
  const textHead = model.config.head === 'text';
  const w = opts.weights;
  const useContrastive = textHead && w.contrastive > 0;
  const usePrior = textHead && w.labelPrior > 0;
  const scope = opts.priorScope ?? 'names';

  const sizes = comm.rowCounts ? [...comm.rowCounts] : Array.from(await comm.allGather(Float32Array.of(n)));
  if (sizes[comm.rank] !== n) throw new Error(`step: this rank holds ${n} rows, the batch plan says ${sizes[comm.rank]}`);
  const N = sizes.reduce((a, b) => a + b, 0);
  const contrastive = new ContrastiveLoss({ rank: comm.rank, world: comm.world, rowCounts: sizes, gather: (x) => comm.allGatherSync(x) });

  const { targets, mask } = resolveTargets(batch.labels, n, L, opts.targets, batch.indices, batch.epoch);

  const inputs = () => ({ x: model.pixelsToInput(batch.images, n), tgt: tf.tensor2d(targets, [n, L]), msk: tf.tensor2d(mask, [n, L]) });
  // Where the backend cannot read inside the tape (webgpu in Node has no dataSync), the rows to
  // gather are computed by a forward of their own first and gathered before the tape.
  const gatheredBefore =
    useContrastive && comm.world > 1 && !readsSynchronously() ? await gatherEmbeddingsAhead(model, batch.labels, inputs, comm) : null;

  const kept: tf.Scalar[] = [];
  const { grads, value } = tf.tidy(() => {
    const { x, tgt, msk } = inputs();
    const pw = opts.posWeight ? tf.tensor1d(opts.posWeight) : null;
    const S = usePrior && scope !== 'states' ? tf.tensor2d(opts.priorTarget, [L, L]) : null;
    // Each node's gradients and saved tensors are freed once the backward has passed it (the peak of a ViT-B/16 step).
    return tf.variableGrads(
      releasingBackward(() => {
        const z = model.encodeImages(x);
        let con: tf.Scalar = tf.scalar(0);
        let prior: tf.Scalar = tf.scalar(0);
        const text = textHead ? model.encodeText() : null;
        const cls = classificationLoss(model.logits(z, text?.names), tgt, msk, pw, N);
        if (text && useContrastive) {
          const t = sampleTextEmbeddings(text.positive, text.negative, tgt, msk);
          con = contrastive.forward(z, t, batch.labels, model.p<tf.Scalar>('logit_scale'), gatheredBefore);
        }
        if (text && usePrior) prior = scopedPriorLoss(text, scope, S, comm.world);
        kept.push(tf.keep(cls), tf.keep(con), tf.keep(prior));
        return tf.addN([tf.mul(cls, w.classification), tf.mul(con, w.contrastive), tf.mul(prior, w.labelPrior)]) as tf.Scalar;
      }),
      opts.trainable ?? model.variables,
    );
  });
  // The four scalars in one read (on a GPU backend each read is a round trip).
  const terms = tf.stack([...kept, value]);
  const [cls, con, prior, total] = Array.from(await terms.data()) as [number, number, number, number];
  terms.dispose();
  kept.forEach((t) => t.dispose());
  value.dispose();
  const flat = await model.flattenGrads(grads, into, opts.trainable);
  Object.values(grads).forEach((g) => g.dispose());
  // A ZeRO-1 caller reduce-scatters instead (each rank needs only its shard of the sum).
  if (reduce) await comm.allReduceSum(flat);
  // Every rank evaluates the whole contrastive loss (its slice live), so its share is 1/world of it.
  const conShare = con / comm.world;
  const share = comm.world === 1 ? total : w.classification * cls + w.contrastive * conShare + w.labelPrior * prior;
  return { grads: flat, terms: { classification: cls, contrastive: conShare, labelPrior: prior, total: share }, globalBatch: N };
}

/**
 * The contrastive loss's all-gather (labels, image and text embedding rows) done before the tape:
 * the same rows the taped forward computes (the same kernels on the same inputs), read with
 * `await data()`. Costs one more image-tower forward per step; only where dataSync is unavailable.
 */
async function gatherEmbeddingsAhead(
  model: CxrModel,
  labels: Float32Array,
  inputs: () => { x: tf.Tensor3D; tgt: tf.Tensor2D; msk: tf.Tensor2D },
  comm: StepComm,
): Promise<Float32Array> {
  const [z, t] = tf.tidy(() => {
    const { x, tgt, msk } = inputs();
    const text = model.encodeText();
    return [model.encodeImages(x), sampleTextEmbeddings(text.positive, text.negative, tgt, msk)];
  });
  try {
    const [zd, td] = await Promise.all([z.data(), t.data()]);
    return await comm.allGather(packRows([labels, zd as Float32Array, td as Float32Array]));
  } finally {
    z.dispose();
    t.dispose();
  }
}
