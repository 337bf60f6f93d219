import type { Argv } from 'yargs';
import { UserError } from '../../shared/util/errors.js';

/** The checkpoint flags of the training command, to be added to its builder: `checkpointFlags(y)`. */
export interface CheckpointFlags {
  checkpointEvery: number;
  checkpointEveryMinutes: number;
  keepCheckpoints: number;
  resume?: string;
  initWeights?: string;
}

export function checkpointFlags<T>(y: Argv<T>) {
  return y
    .option('checkpoint-every', {
      type: 'number',
      default: 0,
      describe: 'save a checkpoint every STEPS optimizer steps (0: off; the end of the run is always saved)',
    })
    .option('checkpoint-every-minutes', {
      type: 'number',
      default: 10,
      describe: 'save a checkpoint every M minutes of training, so a crash loses at most that much (0: off)',
    })
    .option('keep-checkpoints', { type: 'number', default: 3, describe: 'keep the newest K committed checkpoints (at least 1)' })
    .option('resume', {
      type: 'string',
      describe:
        "resume from a run directory (its newest intact committed checkpoint), one step-NNNNNNN directory, or 'auto' (the newest in --out if any, else start fresh: for restarts); --steps/--epochs are totals",
    })
    .option('init-weights', {
      type: 'string',
      describe: 'initialise from a safetensors file with open_clip names (e.g. `coordinator export` output)',
    })
    .check((a) => {
      checkCheckpointFlags(a as unknown as CheckpointFlags);
      return true;
    });
}

/** Flag values a run cannot use, as UserErrors naming the flag. */
export function checkCheckpointFlags(a: CheckpointFlags): void {
  const nonNegInt = (v: number, flag: string) => {
    if (!Number.isInteger(v) || v < 0) throw new UserError(`--${flag} must be a whole number >= 0, got ${v}`);
  };
  nonNegInt(a.checkpointEvery, 'checkpoint-every');
  if (!(a.checkpointEveryMinutes >= 0)) throw new UserError(`--checkpoint-every-minutes must be >= 0, got ${a.checkpointEveryMinutes}`);
  if (!Number.isInteger(a.keepCheckpoints) || a.keepCheckpoints < 1)
    throw new UserError(`--keep-checkpoints must be a whole number >= 1, got ${a.keepCheckpoints}`);
  if (a.resume && a.initWeights)
    throw new UserError('--resume and --init-weights exclude each other: a resumed run already has its weights');
}
