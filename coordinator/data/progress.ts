import cliProgress from 'cli-progress';

/**
 * Progress on stderr: a bar with rate and ETA on a TTY; otherwise (CI, logs) a plain line at
 * every 10% so that logs stay short.
 */
export class Progress {
  private readonly bar: cliProgress.SingleBar | null;
  private readonly t0 = performance.now();
  private lastDecile = 0;
  private done = 0;

  constructor(
    private readonly label: string,
    private readonly total: number,
    tty = process.stderr.isTTY === true,
  ) {
    if (tty) {
      this.bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: `${label} |{bar}| {percentage}% | {value}/{total} images | {speed} img/s | ETA {eta_formatted}`,
          etaBuffer: 200,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, 0, { speed: '-' });
    } else {
      this.bar = null;
    }
  }

  private rate(): number {
    return this.done / Math.max(1e-3, (performance.now() - this.t0) / 1000);
  }

  tick(n = 1): void {
    this.done += n;
    if (this.bar) {
      this.bar.update(this.done, { speed: this.rate().toFixed(0) });
      return;
    }
    const decile = Math.floor((10 * this.done) / this.total);
    if (decile > this.lastDecile && this.done < this.total) {
      this.lastDecile = decile;
      const eta = (this.total - this.done) / Math.max(1e-9, this.rate());
      process.stderr.write(`${this.label}: ${this.done}/${this.total} images (${decile * 10}%), ${this.rate().toFixed(0)} img/s, ETA ${eta.toFixed(0)} s\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
  }
}
