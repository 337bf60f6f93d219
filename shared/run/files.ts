import { z } from 'zod';

/**
 * A training run's directory: the names of the files it holds, one place for every writer and
 * reader, and the schemas of those the trainer writes for others to read (the report, compare).
 */

/** The run's configuration (model/train-config.ts RunConfig). */
export const CONFIG_FILE = 'config.json';
/** Where and on what the run ran (coordinator/report/environment.ts). */
export const ENVIRONMENT_FILE = 'environment.json';
/** One line per training step (MetricsRecord). */
export const METRICS_FILE = 'metrics.jsonl';
/** The final evaluation (EvalResult). */
export const EVAL_FILE = 'eval.json';
/** The trained model: its description and layout, and its parameters (model/params-file.ts). */
export const MODEL_JSON_FILE = 'model.json';
export const MODEL_BIN_FILE = 'model.bin';
/** Test-split and label embeddings for the report's map (shared/run/embeddings.ts). */
export const EMBEDDINGS_FILE = 'embeddings.json';
export const REPORT_FILE = 'report.html';
/** The sharded checkpoints' directory, and the file that commits a step directory in it (shared/checkpoint). */
export const CHECKPOINTS_DIR = 'checkpoints';
export const CHECKPOINT_MANIFEST_FILE = 'manifest.json';

/** Per-epoch evaluations; the run's final one is eval.json. */
export const evalEpochFile = (epoch: number): string => `eval-epoch-${epoch}.json`;

/** Whether a file of the run directory is one of its evaluations (final or per epoch). */
export const isEvalFile = (name: string): boolean => name === EVAL_FILE || /^eval-epoch-\d+\.json$/.test(name);

/** One line of metrics.jsonl as the trainer writes it. */
export type MetricsRecord = {
  step: number;
  epoch: number;
  loss: number;
  loss_classification: number;
  loss_contrastive: number;
  loss_label_prior: number;
  lr: number;
  grad_norm: number;
  images_per_s: number;
  time_compute_s: number;
  time_gather_s: number;
  time_reduce_s: number;
  time_data_wait_s: number;
  time_step_s: number;
};

/** One line of metrics.jsonl as readers accept it: one training step; loss terms are the keys starting with `loss`. */
export const metricsLineSchema = z
  .object({
    step: z.number().int().nonnegative(),
    epoch: z.number().nonnegative(),
    lr: z.number().nonnegative(),
    images_per_s: z.number().nonnegative(),
    loss: z.number().nullable(),
  })
  .catchall(z.unknown());
export type MetricsLine = z.infer<typeof metricsLineSchema>;

const aurocValue = z.number().min(0).max(1).nullable();
/**
 * `zero_shot` of an eval.json from `coordinator eval --zero-shot`: the scores are the softmax over
 * each label's Positive/Negative prompt similarities, not a trained classifier's. `prompts`:
 * `tower`, a pretrained directory's towers as imported (`from`, its weights file and sha256);
 * `heads`, a trained run's prompt embeddings through its heads (`from`, the run or checkpoint, and
 * the pretrained weights it started from, if any). `logit_scale`: exp of the model's, as applied.
 */
export const zeroShotSchema = z.object({
  prompts: z.enum(['tower', 'heads']),
  from: z.string(),
  weights: z.string().optional(),
  sha256: z.string().optional(),
  pretrained: z.object({ weights: z.string(), sha256: z.string() }).optional(),
  logit_scale: z.number(),
});
export type ZeroShotRecord = z.infer<typeof zeroShotSchema>;
/** eval.json (and eval-epoch-N.json, which add `step` and `epoch`). */
export const evalSchema = z
  .object({
    split: z.string(),
    n: z.number().int().nonnegative(),
    auroc: z.record(z.string(), aurocValue),
    mean_auroc: aurocValue,
    mean_auroc_competition: aurocValue,
    ci: z.record(z.string(), z.tuple([z.number(), z.number()]).nullable()).optional(),
    mean_auroc_ci: z.tuple([z.number(), z.number()]).nullable().optional(),
    mean_auroc_competition_ci: z.tuple([z.number(), z.number()]).nullable().optional(),
    zero_shot: zeroShotSchema.optional(),
  })
  .catchall(z.unknown());
export type EvalResult = z.infer<typeof evalSchema>;
