import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { UserError } from '../../shared/util/errors.js';
import { compareEvals, formatComparisonTable } from '../report/compare.js';
import { readRunDir } from '../report/run-dir.js';
import { EVAL_FILE } from '../../shared/run/files.js';

interface CompareArgs {
  runA: string;
  runB: string;
  color?: boolean;
  json?: boolean;
}

/** `coordinator compare A B`: per-label AUROC of two runs (or eval files) and B - A in points, in the terminal. */
export const compareCommand: CommandModule<object, CompareArgs> = {
  command: 'compare <run-a> <run-b>',
  describe: 'per-label AUROC of two runs side by side, B - A in AUROC points',
  builder: (y) =>
    y
      .positional('run-a', { type: 'string', demandOption: true, describe: 'baseline run directory, or an eval .json file' })
      .positional('run-b', {
        type: 'string',
        demandOption: true,
        describe: 'run directory (or eval .json file) compared against the baseline',
      })
      .option('color', {
        type: 'boolean',
        describe: 'colour gains green and losses red',
        defaultDescription: 'on a TTY (off with NO_COLOR)',
      })
      .option('json', { type: 'boolean', default: false, describe: 'print the rows as JSON instead of a table' })
      .example('$0 compare runs/visual-only runs/visual-text', 'what the text branch changed, per finding')
      .example('$0 compare runs/a/zero-shot-eval.json runs/a', 'what fine-tuning added to the zero-shot prompt score')
      .example('$0 compare runs/a runs/b --json | jq ".[] | select(.verdict==\\"loss\\")"', 'the findings that got worse') as never,
  handler: async (argv) => {
    const [a, b] = await Promise.all([readRunDir(argv.runA), readRunDir(argv.runB)]);
    for (const r of [a, b])
      if (!r.evaluation)
        throw new UserError(`${path.join(r.dir, EVAL_FILE)}: missing; evaluate the run first (it is written at the end of training)`);
    const rows = compareEvals(a.evaluation!, b.evaluation!);
    if (argv.json) {
      process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
      return;
    }
    const color = argv.color ?? (process.stdout.isTTY === true && !process.env.NO_COLOR);
    const nameA = a.name === b.name ? a.dir : a.name,
      nameB = a.name === b.name ? b.dir : b.name;
    process.stdout.write(formatComparisonTable(rows, { nameA, nameB, color }));
  },
};
