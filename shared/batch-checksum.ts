import type { SampleBatch } from './dataset/reader.js';

/**
 * Exact integer sums over a batch that both ends of the data plane can compute: the worker from
 * what it received, the coordinator from the dataset. Summed over ranks they must equal the
 * global batch's (all terms stay far below 2^53, so the sums are exact in doubles).
 * - rows; pixels: sum of every pixel value; index_sum: sum of the row indices;
 * - label_pos_pixels: per sample, its pixel sum times its number of positive (== 1) labels,
 *   which ties each sample's labels to its own pixels.
 */
export function batchChecksum(
  b: SampleBatch,
  indices: ArrayLike<number>,
): Record<'rows' | 'pixels' | 'index_sum' | 'label_pos_pixels', number> {
  if (b.n !== indices.length) throw new Error(`the batch has ${b.n} rows, its header lists ${indices.length}`);
  const hw = b.height * b.width;
  const labelCount = b.n > 0 ? b.labels.length / b.n : 0;
  let pixels = 0;
  let labelPosPixels = 0;
  let indexSum = 0;
  for (let s = 0; s < b.n; s++) {
    let sum = 0;
    for (let p = s * hw; p < (s + 1) * hw; p++) sum += b.images[p]!;
    let pos = 0;
    for (let l = s * labelCount; l < (s + 1) * labelCount; l++) if (b.labels[l] === 1) pos++;
    pixels += sum;
    labelPosPixels += sum * pos;
    indexSum += indices[s]!;
  }
  return { rows: b.n, pixels, index_sum: indexSum, label_pos_pixels: labelPosPixels };
}
