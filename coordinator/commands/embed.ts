import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { BACKEND_CHOICES, type BackendChoice } from '../../worker/backend.js';
import { embedSplit } from '../embed.js';

interface EmbedArgs {
  checkpoint: string;
  data: string;
  split: 'train' | 'val' | 'test';
  out: string;
  backend: BackendChoice;
}

export const embedCommand: CommandModule<object, EmbedArgs> = {
  command: 'embed',
  describe: 'image embeddings and labels of a dataset split under a saved model, as an Arrow file',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', demandOption: true, describe: 'run directory (its newest checkpoint) or a checkpoint step directory' })
      .option('data', { type: 'string', demandOption: true, describe: 'dataset directory' })
      .option('split', { choices: ['train', 'val', 'test'] as const, default: 'test' as const })
      .option('out', { type: 'string', demandOption: true, describe: 'Arrow IPC file to write (columns embedding, labels, subject_id, study_id, path)' })
      .option('backend', { choices: BACKEND_CHOICES, default: 'auto' as BackendChoice })
      .example('$0 embed --checkpoint runs/a --data data/nih64 --split test --out runs/a/test-embeddings.arrow', 'L2-normalised test embeddings for a UMAP plot') as never,
  handler: async (a) => {
    const out = path.resolve(a.out);
    const r = await embedSplit({ checkpoint: path.resolve(a.checkpoint), data: path.resolve(a.data), split: a.split, out, backend: a.backend }, (l) => process.stderr.write(l + '\n'));
    process.stdout.write(`${a.split}: ${r.rows} embeddings of dimension ${r.dim} -> ${a.out} (${r.bytes} bytes)\n`);
  },
};
