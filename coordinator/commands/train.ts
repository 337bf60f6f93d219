import * as path from 'node:path';
import type { ArgumentsCamelCase, Argv, CommandModule } from 'yargs';
import cliProgress from 'cli-progress';
import { UserError } from '../../shared/errors.js';
import { BACKEND_CHOICES, type BackendChoice } from '../../worker/backend.js';
import { UNCERTAINTY_POLICIES } from '../../worker/losses.js';
import { MODEL_PRESETS } from '../../worker/model/config.js';
import { openTrainData } from '../train-data.js';
import { trainLocal, type Progress, type TrainConfig } from '../train-local.js';

interface TrainArgs {
  workers: number;
  data: string;
  out: string;
  model: string;
  epochs?: number;
  steps?: number;
  'batch-size': number;
  seed: number;
  eval: 'test' | 'val' | 'none';
  backend: BackendChoice;
  lr: number;
  'warmup-steps': number;
  'min-lr-ratio': number;
  'weight-decay': number;
  'clip-norm': number;
  head: 'text' | 'linear';
  'text-embeddings'?: string;
  'w-cls': number;
  'w-con': number;
  'w-prior': number;
  'label-prior': 'orth' | 'graph';
  uncertainty: string;
  'uncertainty-label': string[];
  blank: 'mask' | 'zeros';
  'pos-weight': 'none' | 'balanced';
  bootstrap: number;
}

/** Progress: a bar on a TTY, otherwise one plain line every `every` steps and at the end. */
function makeProgress(): Progress {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { stream: process.stderr, format: 'train [{bar}] {value}/{total} loss {loss} lr {lr} {ips} img/s eta {eta_formatted}', hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(step, total, rec) {
        const payload = { loss: rec.loss.toFixed(4), lr: rec.lr.toExponential(2), ips: rec.images_per_s.toFixed(1) };
        if (!started) {
          bar.start(total, 0, payload);
          started = true;
        }
        bar.update(step, payload);
      },
      done() {
        if (started) bar.stop();
      },
    };
  }
  return {
    update(step, total, rec) {
      const every = Math.max(1, Math.floor(total / 50));
      if (step % every === 0 || step === total)
        process.stderr.write(
          `step ${step}/${total} epoch ${rec.epoch} loss ${rec.loss.toFixed(4)} (cls ${rec.loss_classification.toFixed(4)} con ${rec.loss_contrastive.toFixed(4)} prior ${rec.loss_label_prior.toFixed(4)}) lr ${rec.lr.toExponential(2)} ${rec.images_per_s.toFixed(1)} img/s\n`,
        );
    },
    done() {},
  };
}

export function trainOptions<T>(y: Argv<T>) {
  return y
    .option('workers', { type: 'number', default: 1, describe: 'worker count (this build trains in-process with 1)' })
    .option('data', { type: 'string', demandOption: true, describe: 'dataset directory (coordinator data prepare)' })
    .option('out', { type: 'string', demandOption: true, describe: 'run directory to create' })
    .option('model', { type: 'string', choices: MODEL_PRESETS as unknown as string[], default: 'tiny' })
    .option('epochs', { type: 'number', describe: 'passes over the training split' })
    .option('steps', { type: 'number', describe: 'optimizer steps (instead of --epochs)' })
    .option('batch-size', { type: 'number', default: 32, describe: 'global batch size' })
    .option('seed', { type: 'number', default: 0 })
    .option('eval', { choices: ['test', 'val', 'none'] as const, default: 'test' as const, describe: 'split evaluated after training' })
    .option('backend', { choices: BACKEND_CHOICES, default: 'auto' as BackendChoice })
    .option('lr', { type: 'number', default: 1e-3, describe: 'peak learning rate' })
    .option('warmup-steps', { type: 'number', default: 20 })
    .option('min-lr-ratio', { type: 'number', default: 0.1, describe: 'final lr as a fraction of --lr (cosine)' })
    .option('weight-decay', { type: 'number', default: 0.05, describe: 'AdamW decay (not on norms, biases, embeddings, scales)' })
    .option('clip-norm', { type: 'number', default: 1, describe: 'clip gradients to this global norm (0: off)' })
    .option('head', { choices: ['text', 'linear'] as const, default: 'text' as const, describe: 'text: classify by label text embeddings; linear: visual-only baseline' })
    .option('text-embeddings', { type: 'string', describe: 'JSON of precomputed prompt vectors (docs/model.md); default learnable' })
    .option('w-cls', { type: 'number', default: 1, describe: 'classification loss weight (0: off)' })
    .option('w-con', { type: 'number', default: 0.5, describe: 'contrastive loss weight (0: off)' })
    .option('w-prior', { type: 'number', default: 0.1, describe: 'label prior loss weight (0: off)' })
    .option('label-prior', { choices: ['orth', 'graph'] as const, default: 'graph' as const })
    .option('uncertainty', { type: 'string', choices: UNCERTAINTY_POLICIES as unknown as string[], default: 'ignore', describe: 'policy for uncertain (-1) labels' })
    .option('uncertainty-label', { type: 'string', array: true, default: [] as string[], describe: 'per-label override LABEL=POLICY (repeatable)' })
    .option('blank', { choices: ['mask', 'zeros'] as const, default: 'mask' as const, describe: 'blank (not mentioned) labels' })
    .option('pos-weight', { choices: ['none', 'balanced'] as const, default: 'none' as const, describe: 'balanced: weight positives by neg/pos (clamped to 50)' })
    .option('bootstrap', { type: 'number', default: 1000, describe: 'bootstrap replicates for the AUROC 95% CI (0: none)' });
}

export function toTrainConfig(a: ArgumentsCamelCase<TrainArgs> | TrainArgs): TrainConfig {
  const args = a as TrainArgs;
  if (args.workers !== 1) throw new UserError(`--workers ${args.workers}: this build trains in one process; use --workers 1`);
  if (args.epochs !== undefined && args.steps !== undefined) throw new UserError('give --epochs or --steps, not both');
  const positive = (v: number, name: string) => {
    if (!Number.isInteger(v) || v <= 0) throw new UserError(`${name} must be a positive integer, got ${v}`);
  };
  positive(args['batch-size'], '--batch-size');
  if (args.steps !== undefined) positive(args.steps, '--steps');
  if (args.epochs !== undefined) positive(args.epochs, '--epochs');
  for (const w of ['w-cls', 'w-con', 'w-prior', 'lr', 'weight-decay', 'clip-norm'] as const)
    if (!(args[w] >= 0)) throw new UserError(`--${w} must be >= 0, got ${args[w]}`);
  return {
    data: path.resolve(args.data),
    out: path.resolve(args.out),
    workers: args.workers,
    model: args.model,
    epochs: args.steps === undefined ? (args.epochs ?? 1) : null,
    steps: args.steps ?? null,
    batchSize: args['batch-size'],
    seed: args.seed,
    eval: args.eval,
    backend: args.backend,
    lr: args.lr,
    warmupSteps: args['warmup-steps'],
    minLrRatio: args['min-lr-ratio'],
    weightDecay: args['weight-decay'],
    clipNorm: args['clip-norm'],
    head: args.head,
    textEmbeddings: args['text-embeddings'] ? path.resolve(args['text-embeddings']) : null,
    wCls: args['w-cls'],
    wCon: args['w-con'],
    wPrior: args['w-prior'],
    labelPrior: args['label-prior'],
    uncertainty: args.uncertainty,
    uncertaintyLabel: args['uncertainty-label'],
    blank: args.blank,
    posWeight: args['pos-weight'],
    bootstrap: args.bootstrap,
  };
}

export const trainCommand: CommandModule<object, TrainArgs> = {
  command: '$0',
  describe: 'train a model (the default command)',
  builder: (y) => trainOptions(y) as unknown as Argv<TrainArgs>,
  handler: async (args) => {
    const cfg = toTrainConfig(args);
    const data = await openTrainData(cfg.data);
    const r = await trainLocal(cfg, data, makeProgress(), (l) => process.stderr.write(l + '\n'));
    const e = r.evalReport;
    process.stdout.write(
      `trained ${r.steps} steps on ${r.backend.name}; run directory ${cfg.out}` +
        (e ? `\n${e.split} mean AUROC ${e.mean_auroc?.toFixed(4) ?? 'n/a'} (competition labels ${e.mean_auroc_competition?.toFixed(4) ?? 'n/a'}), eval.json written` : '') +
        '\n',
    );
  },
};
