import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { embedSplit } from '../eval/embed.js';
import { modelSource, savedModelOptions, type SavedModelArgs } from './eval.js';

export const embedCommand: CommandModule<object, SavedModelArgs> = {
  command: 'embed',
  describe: 'image embeddings and labels of a dataset split under a saved model, as an Arrow file',
  builder: (y) =>
    savedModelOptions(y, 'Arrow IPC file to write (columns embedding, labels, subject_id, study_id, path)').example(
      '$0 embed --checkpoint runs/a --data data/nih64 --split test --out runs/a/test-embeddings.arrow',
      'L2-normalised test embeddings for a UMAP plot',
    ) as never,
  handler: async (a) => {
    const out = path.resolve(a.out);
    const r = await embedSplit({ checkpoint: modelSource(a), data: path.resolve(a.data), split: a.split, out, backend: a.backend }, (l) =>
      process.stderr.write(l + '\n'),
    );
    process.stdout.write(`${a.split}: ${r.rows} embeddings of dimension ${r.dim} -> ${a.out} (${r.bytes} bytes)\n`);
  },
};
