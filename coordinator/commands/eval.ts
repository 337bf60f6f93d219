import { mkdir } from 'node:fs/promises';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import { BACKEND_CHOICES, type BackendChoice } from '../../kernels/backend.js';
import { openTrainData } from '../train/data.js';
import { evalSaved, type ModelSource } from '../eval/saved-model.js';
import { UserError } from '../../shared/util/errors.js';

/** The options of every command that runs a saved model over a dataset split (eval, embed). */
export interface SavedModelArgs {
  checkpoint?: string;
  pretrained?: string;
  data: string;
  split: 'train' | 'val' | 'test';
  out: string;
  backend: BackendChoice;
}

export function savedModelOptions(y: Argv, out: string): Argv<SavedModelArgs> {
  return y
    .option('checkpoint', {
      type: 'string',
      describe: 'run directory (its newest checkpoint), its model.json, or a checkpoint step directory',
    })
    .option('pretrained', {
      type: 'string',
      describe:
        'instead of --checkpoint: an open_clip / model hub directory (its image tower as imported, the heads untrained; eval --zero-shot: both towers, no heads)',
    })
    .option('data', { type: 'string', demandOption: true, describe: 'dataset directory' })
    .option('split', { choices: ['train', 'val', 'test'] as const, default: 'test' as const })
    .option('out', { type: 'string', demandOption: true, describe: out })
    .option('backend', { choices: BACKEND_CHOICES, default: 'auto' as BackendChoice });
}

/** The model source of eval / embed: exactly one of --checkpoint and --pretrained. */
export function modelSource(a: SavedModelArgs): ModelSource {
  if (a.checkpoint && a.pretrained) throw new UserError('give --checkpoint or --pretrained, not both');
  if (a.pretrained) return { pretrained: path.resolve(a.pretrained) };
  if (!a.checkpoint) throw new UserError('give --checkpoint RUN (a trained model) or --pretrained DIR');
  return path.resolve(a.checkpoint);
}

interface EvalArgs extends SavedModelArgs {
  bootstrap: number;
  seed: number;
  'zero-shot': boolean;
}

export const evalCommand: CommandModule<object, EvalArgs> = {
  command: 'eval',
  describe: 'per-label AUROC of a saved model on a dataset split',
  builder: (y) =>
    savedModelOptions(y, 'eval.json to write')
      .option('bootstrap', { type: 'number', default: 1000, describe: 'bootstrap replicates for 95% CIs (0: none)' })
      .option('seed', { type: 'number', default: 0, describe: 'bootstrap seed' })
      .option('zero-shot', {
        type: 'boolean',
        default: false,
        describe:
          "score each label by the softmax over its Positive/Negative prompt similarities, no classifier: --pretrained DIR's towers as imported, or a run's prompts through its heads",
      })
      .example('$0 eval --checkpoint runs/a --data data/nih64 --split test --out runs/a/test-eval.json', 'per-label AUROC with 95% CIs')
      .example(
        '$0 eval --zero-shot --pretrained models/BiomedCLIP --data data/cxr224 --out runs/zero-shot/eval.json',
        'zero-shot AUROC; then: coordinator compare runs/zero-shot runs/finetuned',
      ) as never,
  handler: async (a) => {
    const data = await openTrainData(path.resolve(a.data));
    const rep = await evalSaved(
      modelSource(a),
      data,
      a.split,
      a.backend,
      { replicates: a.bootstrap, seed: a.seed },
      (l) => process.stderr.write(l + '\n'),
      { zeroShot: a['zero-shot'] },
    ).finally(() => data.close());
    // A zero-shot eval often starts its own run-like folder (compare and report read it as a run).
    await mkdir(path.dirname(path.resolve(a.out)), { recursive: true });
    await writeJsonAtomic(path.resolve(a.out), rep);
    process.stdout.write(
      `${a.split}${rep.zero_shot ? ' (zero-shot)' : ''}: n ${rep.n}, mean AUROC ${rep.mean_auroc?.toFixed(4) ?? 'n/a'} (competition ${rep.mean_auroc_competition?.toFixed(4) ?? 'n/a'}) -> ${a.out}\n`,
    );
  },
};
