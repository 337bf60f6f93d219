import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../shared/util/fs-atomic.js';
import { UserError } from '../../shared/util/errors.js';
import { buildReport } from './build.js';
import { readRunDir } from './run-dir.js';
import { REPORT_FILE } from '../../shared/run/files.js';

export interface WriteReportOptions {
  /** A run (or eval file) to compare against, or several (their AUROC side by side, differences from this run coloured). */
  compareDir?: string | readonly string[];
  /** The HTML file to write; default `RUN/report.html`. Charts go next to it as `report-*.svg`. */
  out?: string;
}

export interface WrittenReport {
  html: string;
  svgs: string[];
}

/**
 * Write the report of a run directory: the HTML page and every chart as a standalone SVG next
 * to it (`<out dir>/report-<chart>.svg`). Each file is written atomically. The trainer calls
 * this at the end of every run; `coordinator report` is the same function.
 */
export async function writeReport(runDir: string, opts: WriteReportOptions = {}): Promise<WrittenReport> {
  const run = await readRunDir(runDir);
  const compare = await Promise.all([opts.compareDir ?? []].flat().map((d) => readRunDir(d)));
  // Charts go next to the page: beside an eval file they would overwrite its run's report-*.svg.
  if (run.evalOnly && !opts.out)
    throw new UserError(`${run.dir}: an eval file has no run directory to write the report into; give --out FILE.html`);
  const out = path.resolve(opts.out ?? path.join(run.dir, REPORT_FILE));
  const dir = path.dirname(out);
  const st = await fsp.stat(dir).catch(() => null);
  if (!st?.isDirectory()) throw new UserError(`--out ${out}: the folder ${dir} does not exist; create it first`);
  const built = buildReport(run, compare);
  const svgs: string[] = [];
  for (const c of built.charts) {
    const file = path.join(dir, `report-${c.name}.svg`);
    await writeFileAtomic(file, `<?xml version="1.0" encoding="UTF-8"?>\n${c.svg}\n`);
    svgs.push(file);
  }
  await writeFileAtomic(out, built.html);
  return { html: out, svgs };
}
