import type { Dataset } from '../../shared/dataset/reader.js';

/** --pos-weight balanced: the classification loss's per-label positive weights, from the training split's label counts. */

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

/** balancedPosWeights of every training row of the dataset, read in chunks. */
export async function trainingPosWeights(ds: Dataset): Promise<Float32Array> {
  const L = ds.labelNames.length;
  const train = ds.split('train');
  const all = new Float32Array(train.length * L);
  for (let s = 0; s < train.length; s += 1024) {
    const idx = Array.from({ length: Math.min(1024, train.length - s) }, (_, i) => s + i);
    all.set((await train.read(idx)).labels, s * L);
  }
  return balancedPosWeights(all, L);
}
