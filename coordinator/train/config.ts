import { BUILTIN_LABEL_SETS, loadLabelSet, type LabelSet } from '../../shared/labels.js';
import type { BackendChoice } from '../../kernels/backend.js';
import type { BlankPolicy, LabelPriorKind } from '../../model/losses.js';
import type { AugmentLevel } from '../../shared/augment/policy.js';
import type { PriorScope } from '../../model/prior-scope.js';
import type { VisualHead } from '../../model/config.js';

/**
 * The trainer's resolved configuration and what it needs of a dataset. Training itself runs in
 * worker processes for every worker count: coordinator/train-job.ts and worker/train-step.ts.
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

export interface TrainConfig {
  data: string;
  out: string;
  workers: number;
  model: string;
  epochs: number | null;
  steps: number | null;
  batchSize: number;
  seed: number;
  eval: 'test' | 'val' | 'none';
  backend: BackendChoice;
  lr: number;
  warmupSteps: number;
  minLrRatio: number;
  weightDecay: number;
  clipNorm: number;
  head: 'text' | 'linear';
  textEmbeddings: string | null;
  wCls: number;
  wCon: number;
  wPrior: number;
  labelPrior: LabelPriorKind;
  /** --visual-head none|mlp|transformer and its block count; absent: none, 1. */
  visualHead?: 'none' | VisualHead;
  visualHeadLayers?: number;
  /** Fine-tuning controls (model/param-groups.ts); absent: none, --lr, 1. */
  freeze?: string[];
  headLr?: number | null;
  lrLayerDecay?: number;
  /** Which prompts the label prior covers (--prior-scope); absent: names. */
  priorScope?: PriorScope;
  uncertainty: string;
  uncertaintyLabel: string[];
  blank: BlankPolicy;
  posWeight: 'none' | 'balanced';
  bootstrap: number;
  /** A pretrained model directory (--pretrained): the model's shape and initial weights; null: --model. */
  pretrained?: string | null;
  /** --image-mean / --image-std: RGB preprocessing of imported and exported weights (both or neither); null: the model's default. */
  imageMean?: number[] | null;
  imageStd?: number[] | null;
  /** Training-time augmentation (docs/training.md); absent: none. */
  augment?: AugmentLevel;
  /** Horizontal-flip probability on top of --augment; absent: 0. */
  augmentHflip?: number;
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
