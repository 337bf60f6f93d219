import type { Argv, CommandModule } from 'yargs';
import { BACKEND_CHOICES, type BackendChoice } from '../../kernels/backend.js';
import { UNCERTAINTY_POLICIES } from '../../model/targets.js';
import { MODEL_PRESETS, TEXT_HEADS, TEXT_TOWER_MODES, VISUAL_HEADS } from '../../model/config.js';
import { PRIOR_SCOPES, type PriorScope } from '../../model/prior-scope.js';
import { parseTrainConfig, type TrainFlags } from '../../model/train-config.js';
import { createLogger } from '../../shared/util/log.js';
import { UserError } from '../../shared/util/errors.js';
import { writeReport } from '../report/index.js';
import { trainDistributed } from '../train/train-job.js';
import { checkpointFlags } from '../train/checkpoint-flags.js';
import { AUGMENT_LEVELS, type AugmentLevel } from '../../shared/augment/policy.js';

/** The command's arguments: the training flags (the run's TrainConfig) and where the workers run. */
export type TrainArgs = TrainFlags & {
  listen?: string;
  advertise?: string;
  'data-port'?: number;
  token?: string;
  gpu: boolean;
  prefetch: number;
  'params-check-every': number;
  'metrics-port'?: number;
  'max-restarts'?: number;
  'rejoin-timeout'?: number;
  report: boolean;
  'checkpoint-every': number;
  'checkpoint-every-minutes': number;
  'keep-checkpoints': number;
  resume?: string;
  'init-weights'?: string;
};

export function trainOptions<T>(y: Argv<T>) {
  return y
    .option('workers', {
      type: 'number',
      default: 1,
      describe: 'worker processes (ranks); the model equals one process with the same global batch',
    })
    .option('data', { type: 'string', demandOption: true, describe: 'dataset directory (coordinator data prepare)' })
    .option('out', { type: 'string', demandOption: true, describe: 'run directory to create' })
    .option('model', { type: 'string', choices: MODEL_PRESETS as unknown as string[], default: 'tiny' })
    .option('epochs', { type: 'number', describe: 'passes over the training split' })
    .option('steps', { type: 'number', describe: 'optimizer steps (instead of --epochs)' })
    .option('batch-size', {
      type: 'number',
      default: 32,
      describe: 'global batch size (all workers together; each gets its shardRange of it)',
    })
    .option('seed', { type: 'number', default: 0 })
    .option('eval', { choices: ['test', 'val', 'none'] as const, default: 'test' as const, describe: 'split evaluated after training' })
    .option('backend', { choices: BACKEND_CHOICES, default: 'auto' as BackendChoice })
    .option('lr', { type: 'number', default: 1e-3, describe: 'peak learning rate' })
    .option('freeze', {
      type: 'string',
      array: true,
      default: [] as string[],
      describe: 'visual | text | visual-blocks:N | text-blocks:N: train none / only the last N blocks of that tower (repeatable)',
    })
    .option('head-lr', { type: 'number', describe: 'learning rate of heads, prompts and scales (default: --lr)' })
    .option('lr-layer-decay', { type: 'number', default: 1, describe: 'layer-wise lr decay over each tower (BEiT; 1: off)' })
    .option('warmup-steps', { type: 'number', default: 20 })
    .option('min-lr-ratio', { type: 'number', default: 0.1, describe: 'final lr as a fraction of --lr (cosine)' })
    .option('weight-decay', { type: 'number', default: 0.05, describe: 'AdamW decay (not on norms, biases, embeddings, scales)' })
    .option('clip-norm', { type: 'number', default: 1, describe: 'clip gradients to this global norm (0: off)' })
    .option('head', {
      choices: ['text', 'linear'] as const,
      default: 'text' as const,
      describe: 'text: classify by label text embeddings; linear: visual-only baseline',
    })
    .option('visual-head', {
      choices: VISUAL_HEADS,
      default: 'none' as const,
      describe: 'trainable block on the image tower: mlp on the embedding, transformer over the tokens (docs/model.md)',
    })
    .option('visual-head-layers', { type: 'number', default: 1, describe: 'blocks of --visual-head transformer' })
    .option('text-head', {
      choices: TEXT_HEADS,
      default: 'mlp' as const,
      describe: "trainable block on the prompts: none, mlp on the embeddings, transformer over a text tower's tokens (docs/model.md)",
    })
    .option('text-head-layers', { type: 'number', default: 1, describe: 'blocks of --text-head transformer' })
    .option('text-embeddings', { type: 'string', describe: 'JSON of precomputed prompt vectors (docs/model.md); default learnable' })
    .option('w-cls', { type: 'number', default: 1, describe: 'classification loss weight (0: off)' })
    .option('w-con', { type: 'number', default: 0.5, describe: 'contrastive loss weight (0: off)' })
    .option('w-prior', { type: 'number', default: 0.1, describe: 'label prior loss weight (0: off)' })
    .option('label-prior', { choices: ['orth', 'graph'] as const, default: 'graph' as const })
    .option('prior-scope', {
      choices: PRIOR_SCOPES,
      default: 'names' as PriorScope,
      describe: 'label prior on the label names (target from --label-prior), the 2L state prompts (identity), or all',
    })
    .option('uncertainty', {
      type: 'string',
      choices: UNCERTAINTY_POLICIES as unknown as string[],
      default: 'ignore',
      describe: 'policy for uncertain (-1) labels',
    })
    .option('uncertainty-label', {
      type: 'string',
      array: true,
      default: [] as string[],
      describe: 'per-label override LABEL=POLICY (repeatable)',
    })
    .option('blank', { choices: ['mask', 'zeros'] as const, default: 'mask' as const, describe: 'blank (not mentioned) labels' })
    .option('pos-weight', {
      choices: ['none', 'balanced'] as const,
      default: 'none' as const,
      describe: 'balanced: weight positives by neg/pos (clamped to 50)',
    })
    .option('bootstrap', { type: 'number', default: 1000, describe: 'bootstrap replicates for the AUROC 95% CI (0: none)' })
    .option('augment', {
      choices: AUGMENT_LEVELS,
      default: 'none' as AugmentLevel,
      describe: 'training-image augmentation: crop, rotation, shift, brightness/contrast (docs/training.md)',
    })
    .option('augment-hflip', {
      type: 'number',
      default: 0,
      describe: 'horizontal-flip probability with --augment (default 0: laterality matters in chest films)',
    })
    .option('pretrained', {
      type: 'string',
      describe:
        'open_clip / model hub directory (open_clip_config.json + weights): the model shape and initial weights, instead of --model',
    })
    .option('text-tower', {
      choices: TEXT_TOWER_MODES,
      describe:
        "with --pretrained: the directory's text tower encodes the prompts once at start (frozen) or is trained with the rest (finetune); default frozen when the weights hold a text tower",
    })
    .option('image-mean', imageNormOption('mean'))
    .option('image-std', imageNormOption('std'));
}

/** --image-mean / --image-std: three numbers, R G B. */
export function imageNormOption(which: 'mean' | 'std') {
  return {
    type: 'number',
    array: true,
    describe:
      `per-channel (R G B) ${which} of the RGB preprocessing the imported/exported weights expect ` +
      `(default: preprocess_cfg of --pretrained, CLIP's for vit-b16)`,
  } as const;
}

/** Where the workers run and how the job is watched (train and demo). */
export function jobOptions<T>(y: Argv<T>) {
  return y
    .option('listen', { type: 'string', describe: 'HOST:PORT: wait for remote workers there instead of starting local ones' })
    .option('advertise', { type: 'string', describe: 'address workers reach this coordinator at (with --listen)' })
    .option('data-port', { type: 'number', describe: 'data-feed port with --listen (default: the control port + 1)' })
    .option('token', {
      type: 'string',
      describe: 'job token remote workers must present (default: $CXR_JOB_TOKEN; generated for local workers)',
    })
    .option('gpu', {
      type: 'boolean',
      default: false,
      describe: 'pin local worker i to GPU i (CUDA_VISIBLE_DEVICES; for WebGPU, Mesa device selection: docs/gpu.md)',
    })
    .option('prefetch', { type: 'number', default: 2, describe: 'batches queued ahead per worker' })
    .option('params-check-every', { type: 'number', default: 50, describe: 'compare replica parameter hashes every K steps' })
    .option('metrics-port', { type: 'number', describe: 'serve Prometheus /metrics and /healthz on this port' })
    .option('max-restarts', {
      type: 'number',
      default: 3,
      describe: 'when a worker is lost, start fresh workers from the newest checkpoint, at most this many times (0: fail at once)',
    })
    .option('rejoin-timeout', {
      type: 'number',
      default: 600,
      describe: 'with --listen: seconds a restart waits for the lost worker to register again',
    })
    .option('report', { type: 'boolean', default: true, describe: 'write report.html at the end of the run' });
}

/** Train, then write the report; prints where everything is. */
export async function runTraining(args: TrainArgs): Promise<void> {
  const cfg = parseTrainConfig(args);
  if (args['max-restarts'] !== undefined && (!Number.isInteger(args['max-restarts']) || args['max-restarts'] < 0))
    throw new UserError(`--max-restarts must be a whole number >= 0, got ${args['max-restarts']}`);
  if (args['rejoin-timeout'] !== undefined && !(args['rejoin-timeout'] > 0))
    throw new UserError(`--rejoin-timeout must be a number of seconds > 0, got ${args['rejoin-timeout']}`);
  const log = createLogger('coordinator');
  const r = await trainDistributed(cfg, {
    listen: args.listen,
    advertise: args.advertise,
    dataPort: args['data-port'],
    token: args.token ?? process.env.CXR_JOB_TOKEN,
    gpu: args.gpu,
    prefetch: args.prefetch,
    paramsCheckEvery: args['params-check-every'],
    metricsPort: args['metrics-port'],
    maxRestarts: args['max-restarts'] ?? 3,
    rejoinTimeoutMs: (args['rejoin-timeout'] ?? 600) * 1000,
    checkpoints: {
      checkpointEvery: args['checkpoint-every'],
      checkpointEveryMinutes: args['checkpoint-every-minutes'],
      keepCheckpoints: args['keep-checkpoints'],
      resume: args.resume,
      initWeights: args['init-weights'],
    },
    log,
  });
  if (r.stopped) {
    process.stdout.write(
      `stopped by ${r.stopped.signal} after step ${r.stopped.step} of the run; checkpoint: ${r.checkpoint}\n` +
        `resume with: ${resumeCommand(cfg.out)}\n`,
    );
    process.exitCode = r.stopped.signal === 'SIGINT' ? 130 : 143;
    return;
  }
  const e = r.evalReport;
  const report = args.report ? (await writeReport(cfg.out)).html : null;
  process.stdout.write(
    (r.startStep > 0 ? `resumed at step ${r.startStep}; ` : '') +
      `trained ${r.steps} steps with ${cfg.workers} worker${cfg.workers > 1 ? 's' : ''} in ${r.seconds.toFixed(1)} s; run directory ${cfg.out}` +
      (e
        ? `\n${e.split} mean AUROC ${e.mean_auroc?.toFixed(4) ?? 'n/a'} (competition labels ${e.mean_auroc_competition?.toFixed(4) ?? 'n/a'}), eval.json written`
        : '') +
      (r.restarts > 0 ? `\n${r.restarts} restart${r.restarts > 1 ? 's' : ''} after lost workers (restarts.json)` : '') +
      `\ncheckpoint: ${r.checkpoint}` +
      (report ? `\nreport: ${report}` : '') +
      '\n',
  );
}

/** This invocation's command line with `--resume RUN` in place of any --resume it had. */
function resumeCommand(out: string): string {
  const argv = process.argv.slice(2);
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--resume') i++;
    else if (!argv[i]!.startsWith('--resume=')) kept.push(argv[i]!);
  }
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return ['coordinator', ...kept, '--resume', out].map(quote).join(' ');
}

export const trainCommand: CommandModule<object, TrainArgs> = {
  // `coordinator train ...` and plain `coordinator ...` are the same command.
  command: ['train', '$0'],
  describe: 'train a model (the default command)',
  builder: (y) =>
    checkpointFlags(jobOptions(trainOptions(y)))
      .example(
        '$0 --workers 4 --data data/nih64 --out runs/a --epochs 8 --batch-size 64',
        'train with 4 worker processes (global batch 64)',
      )
      .example(
        '$0 --workers 2 --data data/nih64 --out runs/a --epochs 16 --batch-size 64 --resume auto',
        'continue runs/a on 2 workers from its last checkpoint',
      )
      .example(
        '$0 --data data/cxr224 --out runs/b --pretrained models/BiomedCLIP --lr 1e-5 --epochs 2',
        'start from BiomedCLIP as downloaded from the model hub (docs/model.md)',
      )
      .example('$0 --config train.yaml --lr 1e-4', 'options from a file, one overridden') as unknown as Argv<TrainArgs>,
  handler: (args) => runTraining(args),
};
