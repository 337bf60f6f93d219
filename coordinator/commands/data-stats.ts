import type { CommandModule } from 'yargs';
import { FORMATS, readLabelCsv, type LabelFormat } from '../data/label-csv.js';
import { formatStats, labelStats } from '../data/stats.js';

interface Args {
  format: LabelFormat;
  labels: string;
  json: boolean;
}

export const dataStatsCommand: CommandModule<object, Args> = {
  command: 'stats',
  describe: 'label statistics of a label CSV (no images needed): 1/0/-1/blank per label, patients, studies',
  builder: (y) =>
    y
      .option('format', { choices: FORMATS, demandOption: true, describe: 'label CSV format' })
      .option('labels', { type: 'string', demandOption: true, describe: 'label CSV, plain or gzip' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON instead of a table' })
      .example('$0 data stats --format chexpert --labels chexpert_train.csv.gz', ''),
  handler: async (a) => {
    const s = labelStats(await readLabelCsv(a.labels, a.format));
    process.stdout.write(a.json ? JSON.stringify(s, null, 2) + '\n' : formatStats(s));
  },
};
