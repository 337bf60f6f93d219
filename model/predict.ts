import * as tf from '@tensorflow/tfjs';
import type { CxrModel } from './vit.js';

/** A batch of rows as the dataset reader gives it (extra columns pass through to `onChunk`). */
export interface ScoredBatch {
  readonly n: number;
  readonly images: Uint8Array;
  /** Raw labels [n*L]: 1, 0, -1, NaN. */
  readonly labels: Float32Array;
}

/** What a scoring pass computes per row: scores (logits) [n, L], L2-normalised image embeddings [n, D], or both. */
export interface ScoreOptions<B> {
  /** Rows read and scored at a time (bounds memory). */
  readonly chunk: number;
  readonly scores: boolean;
  readonly embeddings: boolean;
  /** Scores [n, L] of the image embeddings [n, D]: the model's logits unless given (zero-shot's prompt softmax). */
  readonly score?: (z: tf.Tensor2D) => tf.Tensor2D;
  /** Each chunk's batch and outputs, as they come (progress bars, extra columns). */
  readonly onChunk?: (b: B, out: { scores: Float32Array | null; embeddings: Float32Array | null }, done: number) => void;
}

export interface Scored {
  readonly scores: Float32Array | null;
  readonly embeddings: Float32Array | null;
  readonly labels: Float32Array;
}

/**
 * The one scoring loop (evaluation during training, `coordinator eval` and `embed`): rows
 * [start, end) of a split, read `chunk` at a time, each chunk's logits (CxrModel.logits, or the
 * given score) and embeddings computed from one image encoding.
 */
export async function scoreRows<B extends ScoredBatch>(
  model: CxrModel,
  split: { read(indices: ArrayLike<number>): Promise<B> },
  range: { start: number; end: number },
  o: ScoreOptions<B>,
): Promise<Scored> {
  const L = model.config.labels.length;
  const D = model.config.embedDim;
  const n = range.end - range.start;
  const scores = o.scores ? new Float32Array(n * L) : null;
  const embeddings = o.embeddings ? new Float32Array(n * D) : null;
  const labels = new Float32Array(n * L);
  for (let s = 0; s < n; s += o.chunk) {
    const k = Math.min(o.chunk, n - s);
    const b = await split.read(Array.from({ length: k }, (_, i) => range.start + s + i));
    const out = tf.tidy(() => {
      const z = model.encodeImages(model.pixelsToInput(b.images, k));
      const r: Record<string, tf.Tensor2D> = {};
      if (scores) r.logits = o.score ? o.score(z) : model.logits(z);
      if (embeddings) r.z = tf.div(z, tf.maximum(tf.norm(z, 'euclidean', 1, true), 1e-12));
      return r;
    });
    const chunkScores = out.logits ? ((await out.logits.data()) as Float32Array) : null;
    const chunkEmb = out.z ? ((await out.z.data()) as Float32Array) : null;
    for (const t of Object.values(out)) t.dispose();
    if (chunkScores) scores!.set(chunkScores, s * L);
    if (chunkEmb) embeddings!.set(chunkEmb, s * D);
    labels.set(b.labels, s * L);
    o.onChunk?.(b, { scores: chunkScores, embeddings: chunkEmb }, s + k);
  }
  return { scores, embeddings, labels };
}
