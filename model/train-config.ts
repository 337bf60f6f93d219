import * as path from 'node:path';
import { z } from 'zod';
import { AUGMENT_LEVELS, augmentPolicy } from '../shared/augment/policy.js';
import { UserError } from '../shared/util/errors.js';
import { BACKEND_CHOICES } from '../kernels/backend.js';
import {
  checkRgb,
  checkHead,
  MODEL_PRESETS,
  type ModelConfig,
  type Rgb,
  TEXT_HEADS,
  TEXT_TOWER_MODES,
  type TextTowerMode,
  VISUAL_HEADS,
} from './config.js';
import { PRIOR_SCOPES, type PriorScope } from './prior-scope.js';
import { parseFreeze } from './param-groups.js';
import type { LabelPriorKind } from './label-prior.js';
import type { BlankPolicy, UncertaintyPolicy } from './targets.js';

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: Omit<AdamWHyper, 'lr'> = { beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.1 };

const positiveInt = z.number().refine((v) => Number.isInteger(v) && v > 0, 'must be a positive integer');
const nonNegative = z.number().refine((v) => v >= 0, 'must be >= 0');

/**
 * The training run's configuration as the user gives it (flags or --config file), one key per
 * flag in camelCase (`batchSize` is `--batch-size`). The CLI parses it once (parseTrainConfig),
 * config.json records it, and the workers' train step reads it with what the coordinator derived
 * from it and the dataset (RunConfig).
 */
const trainFlagsSchema = z.object({
  workers: positiveInt,
  data: z.string(),
  out: z.string(),
  model: z.enum(MODEL_PRESETS as [string, ...string[]]),
  epochs: positiveInt.optional(),
  steps: positiveInt.optional(),
  batchSize: positiveInt,
  seed: z.number(),
  eval: z.enum(['test', 'val', 'none']),
  backend: z.enum(BACKEND_CHOICES as [(typeof BACKEND_CHOICES)[number], ...(typeof BACKEND_CHOICES)[number][]]),
  lr: nonNegative,
  warmupSteps: z.number(),
  minLrRatio: z.number(),
  weightDecay: nonNegative,
  clipNorm: nonNegative,
  head: z.enum(['text', 'linear']),
  textEmbeddings: z.string().optional(),
  wCls: nonNegative,
  wCon: nonNegative,
  wPrior: nonNegative,
  labelPrior: z.enum(['orth', 'graph']),
  priorScope: z.enum(PRIOR_SCOPES).optional(),
  visualHead: z.enum(VISUAL_HEADS).optional(),
  visualHeadLayers: z.number().optional(),
  textHead: z.enum(TEXT_HEADS).optional(),
  textHeadLayers: z.number().optional(),
  freeze: z.array(z.string()).optional(),
  headLr: nonNegative.optional(),
  lrLayerDecay: z.number().optional(),
  uncertainty: z.string(),
  uncertaintyLabel: z.array(z.string()),
  blank: z.enum(['mask', 'zeros']),
  posWeight: z.enum(['none', 'balanced']),
  bootstrap: z.number(),
  pretrained: z.string().optional(),
  textTower: z.enum(TEXT_TOWER_MODES as [TextTowerMode, ...TextTowerMode[]]).optional(),
  imageMean: z.array(z.number()).optional(),
  imageStd: z.array(z.number()).optional(),
  augment: z.enum(AUGMENT_LEVELS).optional(),
  augmentHflip: z.number().optional(),
});

/** The training flags as yargs declares them (kebab-case keys, `--epochs`/`--steps`/`--text-embeddings` optional). */
export type TrainFlags = { [K in keyof z.input<typeof trainFlagsSchema> as Kebab<K & string>]: z.input<typeof trainFlagsSchema>[K] };
type Kebab<S extends string> = S extends `${infer H}${infer T}` ? `${H extends Lowercase<H> ? H : `-${Lowercase<H>}`}${Kebab<T>}` : S;

export type EvalSplit = 'test' | 'val' | 'none';

/** The one training configuration: the flags, checked, with paths absolute and exactly one of epochs/steps. */
export type TrainConfig = Omit<
  z.output<typeof trainFlagsSchema>,
  | 'epochs'
  | 'steps'
  | 'textEmbeddings'
  | 'priorScope'
  | 'visualHead'
  | 'visualHeadLayers'
  | 'textHead'
  | 'textHeadLayers'
  | 'freeze'
  | 'headLr'
  | 'lrLayerDecay'
  | 'pretrained'
  | 'textTower'
  | 'imageMean'
  | 'imageStd'
  | 'augment'
  | 'augmentHflip'
> & {
  epochs: number | null;
  steps: number | null;
  textEmbeddings: string | null;
  labelPrior: LabelPriorKind;
  blank: BlankPolicy;
  eval: EvalSplit;
  /** --visual-head none|mlp|transformer and its block count; absent: none, 1. */
  visualHead?: (typeof VISUAL_HEADS)[number];
  visualHeadLayers?: number;
  /** --text-head none|mlp|transformer and its block count; absent: mlp, 1. */
  textHead?: (typeof TEXT_HEADS)[number];
  textHeadLayers?: number;
  /** Which prompts the label prior covers (--prior-scope); absent: names. */
  priorScope?: PriorScope;
  /** Fine-tuning controls (model/param-groups.ts): --freeze values, --head-lr (null: --lr), --lr-layer-decay; absent: none, null, 1. */
  freeze?: string[];
  headLr?: number | null;
  lrLayerDecay?: number;
  /** A pretrained model directory (--pretrained): the model's shape and initial weights; null: --model. */
  pretrained?: string | null;
  /**
   * --text-tower with --pretrained: the directory's text tower encodes the prompts once (frozen) or
   * is trained in the step (finetune); null: frozen when the weights hold a text tower.
   */
  textTower?: TextTowerMode | null;
  /** --image-mean / --image-std: RGB preprocessing of imported and exported weights (both or neither); null: the model's default. */
  imageMean?: number[] | null;
  imageStd?: number[] | null;
  /** Training-time augmentation (docs/training.md); absent: none. */
  augment?: (typeof AUGMENT_LEVELS)[number];
  /** Horizontal-flip probability on top of --augment; absent: 0. */
  augmentHflip?: number;
};

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

function isArrayFlag(key: string): boolean {
  const field = (trainFlagsSchema.shape as Record<string, z.ZodType>)[key];
  return field instanceof z.ZodArray || (field instanceof z.ZodOptional && field.unwrap() instanceof z.ZodArray);
}

/** The training flags (kebab-case keys, as yargs gives them) as a TrainConfig; a bad value is a UserError naming its flag. */
export function parseTrainConfig(flags: TrainFlags | Record<string, unknown>): TrainConfig {
  const f = flags as Record<string, unknown>;
  const input = Object.fromEntries(Object.keys(trainFlagsSchema.shape).map((k) => [k, f[kebab(k)] ?? undefined]));
  const parsed = trainFlagsSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0]);
    const value = input[key];
    // yargs turns a scalar flag given twice into an array; say that rather than "expected number".
    if (Array.isArray(value) && !isArrayFlag(key))
      throw new UserError(
        `--${kebab(key)} was given ${value.length} times (${value.map((v) => JSON.stringify(v)).join(', ')}): give it once`,
      );
    throw new UserError(`--${kebab(key)} ${issue.message}, got ${JSON.stringify(value)}`);
  }
  const a = parsed.data;
  if (a.epochs !== undefined && a.steps !== undefined) throw new UserError('give --epochs or --steps, not both');
  augmentPolicy(a.augment ?? 'none', a.augmentHflip ?? 0);
  checkHead('visual', a.visualHead ?? 'none', a.visualHeadLayers ?? 1);
  checkHead('text', a.textHead ?? 'mlp', a.textHeadLayers ?? 1);
  parseFreeze(a.freeze ?? []);
  const image = imageNorm(a.imageMean, a.imageStd);
  return {
    ...a,
    data: path.resolve(a.data),
    out: path.resolve(a.out),
    epochs: a.steps === undefined ? (a.epochs ?? 1) : null,
    steps: a.steps ?? null,
    textEmbeddings: a.textEmbeddings ? path.resolve(a.textEmbeddings) : null,
    priorScope: a.priorScope ?? 'names',
    visualHead: a.visualHead ?? 'none',
    visualHeadLayers: a.visualHeadLayers ?? 1,
    textHead: a.textHead ?? 'mlp',
    textHeadLayers: a.textHeadLayers ?? 1,
    freeze: a.freeze ?? [],
    headLr: a.headLr ?? null,
    lrLayerDecay: a.lrLayerDecay ?? 1,
    pretrained: a.pretrained ? path.resolve(a.pretrained) : null,
    textTower: a.textTower ?? null,
    imageMean: image ? [...image.mean] : null,
    imageStd: image ? [...image.std] : null,
    augment: a.augment ?? 'none',
    augmentHflip: a.augmentHflip ?? 0,
  } as TrainConfig;
}

/** Both of --image-mean and --image-std, or neither. */
export function imageNorm(mean: number[] | undefined, std: number[] | undefined): { mean: Rgb; std: Rgb } | undefined {
  if (mean === undefined && std === undefined) return undefined;
  if (mean === undefined || std === undefined)
    throw new UserError('give --image-mean and --image-std together (three numbers each, R G B)');
  const image = { mean: mean as unknown as Rgb, std: std as unknown as Rgb };
  checkRgb(image);
  return image;
}

/** The loss weights a run trains with: the contrastive and label-prior terms need the text head. */
export function lossWeights(cfg: TrainConfig): { classification: number; contrastive: number; labelPrior: number } {
  const textHead = cfg.head === 'text';
  return { classification: cfg.wCls, contrastive: textHead ? cfg.wCon : 0, labelPrior: textHead ? cfg.wPrior : 0 };
}

/** What the coordinator derives from the config and the dataset (config.json's `resolved`). */
export interface ResolvedTrain {
  readonly model: ModelConfig;
  readonly parameters: number;
  readonly totalSteps: number;
  readonly stepsPerEpoch: number;
  readonly perWorkerBatch: number;
  readonly labelSet: string | null;
  readonly adamw: Omit<AdamWHyper, 'lr'>;
  /** Per-label positive weights (--pos-weight balanced), or null. */
  readonly posWeight: number[] | null;
  readonly uncertainty: UncertaintyPolicy[];
  /** The label-prior target similarity S [L*L] of the names (--label-prior); empty with --prior-scope states (the identity is implied). */
  readonly priorTarget: number[];
  /** Competition labels (mean AUROC over them), from the label set. */
  readonly competition: string[];
}

/** A run's config.json: the configuration and what was derived from it. */
export interface RunConfig extends TrainConfig {
  readonly resolved: ResolvedTrain;
}

/**
 * What the `train` step reads (key `train` of the workers' config): the run's config and what a
 * rank needs besides to build the identical model and optimizer on its own.
 */
export interface TrainStepConfig {
  readonly run: RunConfig;
  /** Fixed prompt vectors (--text-embeddings), or null for learnable text. */
  readonly fixedPrompts: number[] | null;
  /** A committed step directory the coordinator chose (resolveCheckpoint) to resume from, or null. */
  readonly resume: string | null;
  /** A safetensors file with open_clip names to start from (--init-weights), or null. */
  readonly initWeights: string | null;
}

/**
 * The config a checkpoint's manifest records: what a resumed run must share with it (the model
 * and the data order), and what `eval`/`export` of a checkpoint read (model, fixedPrompts).
 */
export function checkpointConfig(run: RunConfig, fixedPrompts: number[] | null, trainRows: number) {
  return {
    model: run.resolved.model,
    fixedPrompts,
    labelSet: run.resolved.labelSet,
    labels: run.resolved.model.labels,
    seed: run.seed,
    globalBatch: run.batchSize,
    trainRows,
  };
}
