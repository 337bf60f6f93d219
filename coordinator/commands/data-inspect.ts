import type { CommandModule } from 'yargs';
import { UserError } from '../../shared/util/errors.js';
import { inspectDataset } from '../data/inspect.js';
import { summaryTable } from '../data/summary.js';

interface Args {
  dir: string;
  json: boolean;
}

export const dataInspectCommand: CommandModule<object, Args> = {
  command: 'inspect <dir>',
  describe: "a dataset's manifest summary and a sha256 check of every shard",
  builder: (y) =>
    y
      .positional('dir', { type: 'string', demandOption: true, describe: 'dataset directory' })
      .option('json', { type: 'boolean', default: false, describe: 'print the manifest and shard checks as JSON' })
      .example('$0 data inspect data/nih64', 'summary table and a sha256 check of every shard')
      .example('$0 data inspect data/nih64 --json', 'the same as JSON, for scripts'),
  handler: async (a) => {
    const r = await inspectDataset(a.dir);
    const m = r.manifest;
    if (a.json) {
      process.stdout.write(JSON.stringify({ dir: a.dir, ok: r.ok, manifest: m, shards: r.shards }, null, 2) + '\n');
    } else {
      process.stdout.write(
        `${a.dir}: ${m.labelSet} (${m.labels.length} labels), ${m.image.height}x${m.image.width} uint8 grayscale, ` +
          `${m.rowsPerBatch} rows per record batch, made by ${m.createdBy} at ${m.createdAt}\n`,
      );
      process.stdout.write(summaryTable(m));
      process.stdout.write(
        `shards: ${r.shards.filter((s) => s.ok).length} of ${r.shards.length} verified (size, sha256, record-batch index)\n`,
      );
    }
    const bad = r.shards.filter((s) => !s.ok);
    if (bad.length > 0)
      throw new UserError(
        `${bad.length} corrupt shard(s) in ${a.dir}: ${bad.map((s) => `${s.file} (${s.problem})`).join('; ')}; regenerate the dataset`,
        1,
      );
  },
};
