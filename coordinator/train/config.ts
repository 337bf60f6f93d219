import { BUILTIN_LABEL_SETS, loadLabelSet, type LabelSet } from '../../shared/labels.js';

/**
 * What training needs of a dataset. The run's configuration is model/train-config.ts; training
 * itself runs in worker processes for every worker count (train-job.ts, worker/steps/train.ts).
 */

export type SplitName = 'train' | 'val' | 'test';

/** What training needs of a dataset (the shape of shared/dataset/reader's Dataset). */
export interface TrainData {
  readonly labelNames: readonly string[];
  /** Label-set name from the manifest, for the label graph. */
  readonly labelSet: string;
  readonly imageSize: number;
  split(name: SplitName): {
    readonly length: number;
    read(indices: ArrayLike<number>): Promise<{ n: number; images: Uint8Array; labels: Float32Array }>;
  };
}

/** The label set a dataset's labels belong to (by manifest name, else by identical label list). */
export function labelSetFor(name: string, labels: readonly string[]): LabelSet | null {
  const candidates = [name, ...BUILTIN_LABEL_SETS];
  for (const c of candidates) {
    try {
      const set = loadLabelSet(c);
      if (set.labels.length === labels.length && set.labels.every((l, i) => l === labels[i])) return set;
    } catch {
      /* not a loadable set */
    }
  }
  return null;
}
