import { promises as fsp } from 'node:fs';

/**
 * A run's metrics.jsonl, one line per step in step order. Opened at a resume point (a checkpoint's
 * step), it keeps the lines up to that step and drops the later ones, run before a crash and lost
 * with it, so that every step appears once however often the run was resumed or restarted.
 */
export class MetricsLog {
  private writing: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly file: string,
    private fh: fsp.FileHandle,
  ) {}

  static async open(file: string, keepThrough: number): Promise<MetricsLog> {
    await keepSteps(file, keepThrough);
    return new MetricsLog(file, await fsp.open(file, 'a'));
  }

  /** Append one line (queued; lines stay in call order). */
  write(record: { step: number }): void {
    this.writing = this.writing.then(() => this.fh.write(JSON.stringify(record) + '\n'));
  }

  /** Wait for the queued lines; rethrows a failed write. */
  flush(): Promise<unknown> {
    return this.writing;
  }

  /** Go back to `step` (a restart from its checkpoint): drop the lines after it. */
  async rewind(step: number): Promise<void> {
    await this.writing.catch(() => {});
    await this.fh.close();
    await keepSteps(this.file, step);
    this.fh = await fsp.open(this.file, 'a');
    this.writing = Promise.resolve();
  }

  async close(): Promise<void> {
    await this.writing.catch(() => {});
    await this.fh.close();
  }
}

/** Rewrite `file` with only its lines of steps <= `step` (none for step 0). */
async function keepSteps(file: string, step: number): Promise<void> {
  let kept = '';
  if (step > 0) {
    const old = await fsp.readFile(file, 'utf8').catch(() => '');
    kept = old
      .split('\n')
      .filter((l) => l.trim() && (JSON.parse(l) as { step: number }).step <= step)
      .map((l) => l + '\n')
      .join('');
  }
  await fsp.writeFile(file, kept);
}
