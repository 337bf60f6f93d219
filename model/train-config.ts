import type { BackendChoice } from '../kernels/backend.js';
import type { ModelConfig } from './config.js';
import type { BlankPolicy, UncertaintyPolicy } from './losses.js';
import type { PriorScope } from './prior-scope.js';

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: Omit<AdamWHyper, 'lr'> = { beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.1 };

/**
 * What the `train` step reads from the resolved config (key `train`), written by the coordinator's
 * train command: everything a rank needs to build the identical model and optimizer on its own.
 */
export interface TrainSection {
  readonly backend: BackendChoice;
  readonly model: ModelConfig;
  /** Fixed prompt vectors (--text-embeddings), or null for learnable text. */
  readonly fixedPrompts: number[] | null;
  readonly weights: { classification: number; contrastive: number; labelPrior: number };
  readonly uncertainty: UncertaintyPolicy[];
  readonly blank: BlankPolicy;
  readonly posWeight: number[] | null;
  readonly priorTarget: number[];
  /** Which prompts the label prior covers; absent: names. */
  readonly priorScope?: PriorScope;
  /**
   * Learning-rate multiplier per layout entry (--freeze: 0, --head-lr, --lr-layer-decay;
   * model/param-groups.ts); absent: 1 everywhere.
   */
  readonly lrScales?: number[];
  readonly optimizer: { lr: number; warmupSteps: number; totalSteps: number; minLrRatio: number; weightDecay: number; clipNorm: number };
  /** The run directory (shared storage with remote workers): rank 0 writes the model and evaluations there. */
  readonly out: string;
  /** The dataset directory the ranks read evaluation splits from (shared storage with remote workers). */
  readonly data: string;
  readonly eval: 'test' | 'val' | 'none';
  /** Competition labels (mean AUROC over them), from the label set. */
  readonly competition: string[];
  readonly bootstrap: number;
  /** A committed step directory the coordinator chose (resolveCheckpoint) to resume from, or null. */
  readonly resume: string | null;
  /** A safetensors file with open_clip names to start from (--init-weights), or null. */
  readonly initWeights: string | null;
}
