import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { StepSummary } from '../job/control-server.js';
import { METRICS_FILE, type MetricsRecord } from '../../shared/run/files.js';
import { parseJsonl } from '../../shared/run/jsonl.js';
import { diskFull, UserError } from '../../shared/util/errors.js';
import { writeFileAtomic } from '../../shared/util/fs-atomic.js';

/** The metrics.jsonl line of one step, from the ranks' reports (losses are global; times are the slowest rank's). */
export function metricsRecord(s: StepSummary, stepSeconds: number): MetricsRecord {
  const l = s.losses;
  return {
    step: s.step + 1,
    epoch: s.epoch,
    loss: l.loss ?? NaN,
    loss_classification: l.loss_classification ?? NaN,
    loss_contrastive: l.loss_contrastive ?? NaN,
    loss_label_prior: l.loss_label_prior ?? NaN,
    lr: l.lr ?? NaN,
    grad_norm: l.grad_norm ?? NaN,
    images_per_s: stepSeconds > 0 ? s.images / stepSeconds : 0,
    time_compute_s: s.timings.compute,
    time_gather_s: s.timings.gather,
    time_reduce_s: s.timings.reduce,
    time_data_wait_s: s.timings.dataWait,
    time_step_s: stepSeconds,
  };
}

/**
 * The lines of a metrics.jsonl up to and including `step`. A last line without its newline is
 * what a run killed mid-write leaves: it is dropped (its step is rerun). Any other bad line is an
 * error naming the file and line, since dropping it would lose history silently.
 */
export function linesUpTo(text: string, step: number, file = METRICS_FILE): string {
  const kept: string[] = [];
  for (const l of parseJsonl(text, file, 'remove or fix that line, then resume').lines) {
    const at = typeof l.doc === 'object' && l.doc !== null ? (l.doc as { step?: unknown }).step : undefined;
    if (typeof at !== 'number') throw new UserError(`${file}:${l.n}: no numeric 'step'; remove or fix that line, then resume`);
    if (at <= step) kept.push(l.text + '\n');
  }
  return kept.join('');
}

/** The run's metrics.jsonl, appended to in step order without blocking the step reports. */
export class MetricsLog {
  private writing: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly path: string,
    private file: fsp.FileHandle,
  ) {}

  /**
   * A resumed run continues metrics.jsonl from the checkpoint: lines of steps after it (run before
   * a crash, lost with it) are dropped so that every step appears once.
   */
  static async open(out: string, startStep: number): Promise<MetricsLog> {
    const file = path.join(out, METRICS_FILE);
    const kept = startStep > 0 ? linesUpTo(await fsp.readFile(file, 'utf8').catch(() => ''), startStep, file) : '';
    await writeFileAtomic(file, kept);
    return new MetricsLog(file, await fsp.open(file, 'a'));
  }

  /** Back to `step` (a restart in place from its checkpoint): the lines after it go, as at a resume. */
  async rewind(step: number): Promise<void> {
    await this.writing.catch(() => {});
    await this.file.close();
    await writeFileAtomic(this.path, step > 0 ? linesUpTo(await fsp.readFile(this.path, 'utf8'), step, this.path) : '');
    this.file = await fsp.open(this.path, 'a');
    this.writing = Promise.resolve();
  }

  append(rec: MetricsRecord): void {
    this.writing = this.writing.then(async () => {
      await this.file.write(JSON.stringify(rec) + '\n').catch((e: unknown) => {
        throw diskFull(
          e,
          this.path,
          `the lines before step ${rec.step} and the committed checkpoints are intact: free space, then resume the run`,
        );
      });
    });
  }

  /** Every appended line written. */
  async flushed(): Promise<void> {
    await this.writing;
  }

  async close(): Promise<void> {
    await this.writing.catch(() => {});
    await this.file.close();
  }
}
