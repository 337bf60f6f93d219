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
      .demandCommand(1, 'name a data command: prepare, stats, synth or inspect'),
  handler: () => undefined,
};
