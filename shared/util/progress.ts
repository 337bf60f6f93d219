import cliProgress from 'cli-progress';
import type { Logger } from 'pino';

/**
 * Progress of a long loop (prepare, train, eval): a bar with rate and ETA on a TTY, and plain
 * periodic lines otherwise (Kubernetes logs, CI), so a log shows progress without a line per
 * step. With a `logger`, the periodic lines are structured log records instead.
 *
 *   const p = createProgress({ label: 'train', total: steps, unit: 'steps' });
 *   p.update(step, { loss: 2.31 });
 *   p.stop();
 */
export interface ProgressOptions {
  label: string;
  /** Unknown totals (streaming input) show count and rate without percent or ETA. */
  total?: number;
  unit?: string;
  /** Default process.stderr; TTY mode is chosen from its isTTY unless `tty` is given. */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  tty?: boolean;
  /** Seconds between plain lines when not a TTY. Default 30 (CXR_PROGRESS_INTERVAL_S). */
  intervalS?: number;
  /** Off a TTY, log the lines as structured records through this logger. */
  logger?: Logger;
  /** Clock in ms, for tests. */
  now?: () => number;
}

export type ProgressFields = Record<string, string | number | boolean | null | undefined>;

export interface Progress {
  /** Set the count done so far (absolute, not a delta). */
  update(done: number, fields?: ProgressFields): void;
  increment(delta?: number, fields?: ProgressFields): void;
  stop(fields?: ProgressFields): void;
}

/** "12s", "3m05s", "1h02m", "2d03h". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

/**
 * Rate over a sliding window of recent samples (so the ETA follows a run that speeds up after
 * warm-up or slows down when data loading stalls), and the ETA it implies.
 */
export class RateWindow {
  private samples: [number, number][] = [];
  constructor(private readonly windowMs = 30_000) {}

  add(tMs: number, done: number): void {
    this.samples.push([tMs, done]);
    // Keep one sample older than the window so the rate always spans at least the window.
    while (this.samples.length > 2 && this.samples[1]![0] <= tMs - this.windowMs) this.samples.shift();
  }

  /** Units per second, or null before two samples at different times. */
  rate(): number | null {
    if (this.samples.length < 2) return null;
    const [t0, n0] = this.samples[0]!,
      [t1, n1] = this.samples[this.samples.length - 1]!;
    return t1 > t0 ? ((n1 - n0) * 1000) / (t1 - t0) : null;
  }

  etaS(done: number, total: number | undefined): number | null {
    const r = this.rate();
    if (total === undefined || r === null || r <= 0) return null;
    return Math.max(0, total - done) / r;
  }
}

function fieldsText(fields: ProgressFields | undefined): string {
  if (!fields) return '';
  return Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v}`)
    .join(' ');
}

function rateText(rate: number | null, unit: string): string {
  if (rate === null) return '';
  return rate >= 1 ? `${rate.toFixed(rate >= 100 ? 0 : 1)} ${unit}/s` : `${(1 / rate).toFixed(1)} s/${unit.replace(/s$/, '')}`;
}

export function createProgress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  const tty = opts.tty ?? (stream as { isTTY?: boolean }).isTTY === true;
  const now = opts.now ?? (() => Date.now());
  const unit = opts.unit ?? 'items';
  const start = now();
  const window = new RateWindow();
  window.add(start, 0);
  let done = 0;
  let last: ProgressFields | undefined;
  let stopped = false;

  if (tty) {
    const bar = new cliProgress.SingleBar(
      {
        stream: stream as NodeJS.WritableStream,
        format: `${opts.label} ${opts.total === undefined ? '' : '{bar} {percentage}% | '}{value}${opts.total === undefined ? '' : '/{total}'} ${unit} | {rateText}${opts.total === undefined ? '' : ' | ETA {etaText}'} {fieldsText}`,
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 50,
        fps: 5,
        barsize: 28,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(opts.total ?? 0, 0, { rateText: '', etaText: '?', fieldsText: '' });
    const payload = (f: ProgressFields | undefined) => {
      const eta = window.etaS(done, opts.total);
      return { rateText: rateText(window.rate(), unit), etaText: eta === null ? '?' : formatDuration(eta), fieldsText: fieldsText(f) };
    };
    return {
      update(n, fields) {
        if (stopped) return;
        done = n;
        last = fields ?? last;
        window.add(now(), n);
        bar.update(n, payload(last));
      },
      increment(delta = 1, fields) {
        this.update(done + delta, fields);
      },
      stop(fields) {
        if (stopped) return;
        stopped = true;
        bar.update(done, payload(fields ?? last));
        bar.stop();
      },
    };
  }

  const intervalMs = (opts.intervalS ?? Number(process.env.CXR_PROGRESS_INTERVAL_S ?? 30)) * 1000;
  let lastLine = -Infinity;
  const line = (final: boolean) => {
    const t = now();
    const rate = final ? (t > start ? (done * 1000) / (t - start) : null) : window.rate();
    const eta = final ? null : window.etaS(done, opts.total);
    const pct = opts.total ? ` (${((100 * done) / opts.total).toFixed(1)}%)` : '';
    const parts = [
      `${opts.label}: ${done}${opts.total === undefined ? '' : `/${opts.total}`} ${unit}${pct}`,
      rateText(rate, unit),
      final ? `done in ${formatDuration((t - start) / 1000)}` : eta === null ? '' : `ETA ${formatDuration(eta)}`,
      fieldsText(last),
    ].filter(Boolean);
    if (opts.logger) {
      opts.logger.info(
        {
          progress: opts.label,
          done,
          total: opts.total ?? null,
          rate_per_s: rate,
          eta_s: eta === null ? null : Math.round(eta),
          final,
          ...last,
        },
        parts.join(', '),
      );
    } else stream.write(parts.join(', ') + '\n');
    lastLine = t;
  };
  return {
    update(n, fields) {
      if (stopped) return;
      done = n;
      last = fields ?? last;
      const t = now();
      window.add(t, n);
      if (t - lastLine >= intervalMs) line(false);
    },
    increment(delta = 1, fields) {
      this.update(done + delta, fields);
    },
    stop(fields) {
      if (stopped) return;
      stopped = true;
      last = fields ?? last;
      line(true);
    },
  };
}
