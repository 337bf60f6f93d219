import type { CommandModule } from 'yargs';
import { dataInspectCommand } from './data-inspect.js';
import { dataPrepareCommand } from './data-prepare.js';
import { dataStatsCommand } from './data-stats.js';
import { dataSynthCommand } from './data-synth.js';

/** `coordinator data ...`: the dataset tools (docs/dataset.md). */
export const dataCommand: CommandModule = {
  command: 'data <command>',
  describe: 'dataset tools: prepare, stats, synth, inspect',
  builder: (y) =>
    y
      .command(dataPrepareCommand as CommandModule)
      .command(dataStatsCommand as CommandModule)
      .command(dataSynthCommand as CommandModule)
      .command(dataInspectCommand as CommandModule)
      .demandCommand(1, 'name a data command: prepare, stats, synth or inspect')
      .example('$0 data synth --out data/synth --count 3000', 'synthetic chest X-rays with learnable findings')
      .example(
        '$0 data prepare --format nih --labels labels.csv --images images/ --out data/nih64',
        'an NIH ChestX-ray14 copy as a dataset',
      ),
  handler: () => undefined,
};
