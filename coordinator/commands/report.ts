import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { writeReport } from '../report/write.js';

interface ReportArgs {
  run: string;
  compare?: string[];
  out?: string;
}

/** `coordinator report RUN`: the run's HTML report and its charts as SVG files. */
export const reportCommand: CommandModule<object, ReportArgs> = {
  command: 'report <run>',
  describe: 'a self-contained HTML report of a run (curves, per-label AUROC, comparison, embeddings) plus its charts as SVG',
  builder: (y) =>
    y
      .positional('run', { type: 'string', demandOption: true, describe: 'run directory (holds config.json, metrics.jsonl, eval.json)' })
      .option('compare', {
        type: 'string',
        array: true,
        describe:
          'a run directory or eval .json file (e.g. a zero-shot eval) to compare with (repeatable): AUROC side by side, differences from RUN over 0.5 points coloured',
      })
      .option('out', {
        type: 'string',
        describe: 'HTML file to write (charts go next to it as report-*.svg)',
        defaultDescription: 'RUN/report.html',
      })
      .example('$0 report runs/visual-text', 'write runs/visual-text/report.html and report-*.svg')
      .example('$0 report runs/visual-only --compare runs/visual-text --out paper/fig.html', 'visual-only vs visual+text')
      .example('$0 report runs/names --compare runs/states --compare runs/all', 'three runs against one baseline')
      .example('$0 report runs/a --compare runs/a/zero-shot-eval.json', 'the run against its own zero-shot prompt score') as never,
  handler: async (argv) => {
    const written = await writeReport(argv.run, {
      ...(argv.compare?.length ? { compareDir: argv.compare } : {}),
      ...(argv.out ? { out: argv.out } : {}),
    });
    const rel = (f: string) => {
      const r = path.relative(process.cwd(), f);
      return r && !r.startsWith('..') ? r : f;
    };
    process.stdout.write(`report: ${rel(written.html)}\n`);
    process.stdout.write(`charts: ${written.svgs.map(rel).join(' ')}\n`);
  },
};
