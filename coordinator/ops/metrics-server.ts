import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { MetricsLine } from '../../shared/run/files.js';
import { UserError } from '../../shared/util/errors.js';

/**
 * What the coordinator exposes to operators: Prometheus metrics (`GET /metrics`) and a health
 * endpoint (`GET /healthz`, 200 healthy / 503 not, JSON body saying why) for Kubernetes probes.
 * The training loop feeds it through `TrainingMetrics`; every metric is named `cxr_*`.
 */

export type RunPhase = 'starting' | 'training' | 'evaluating' | 'checkpointing' | 'done' | 'failed';
const PHASES: RunPhase[] = ['starting', 'training', 'evaluating', 'checkpointing', 'done', 'failed'];

export interface Health {
  healthy: boolean;
  phase: RunPhase;
  step: number | null;
  workers_up: number;
  workers_expected: number | null;
  seconds_since_last_step: number | null;
  problems: string[];
}

export interface TrainingMetricsOptions {
  /** Unhealthy when training and no step was reported for this long. Default 600 s. */
  stallAfterS?: number;
  /** Also collect Node process metrics (CPU, memory, event-loop lag). Default true. */
  processMetrics?: boolean;
  /** Clock, for tests of the stall rule. */
  now?: () => number;
}

const PHASE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class TrainingMetrics {
  readonly registry = new Registry();
  private readonly now: () => number;
  private readonly stallAfterS: number;
  private phase: RunPhase = 'starting';
  private lastStep: number | null = null;
  private lastStepAt: number | null = null;
  private workersUp = 0;
  private workersExpected: number | null = null;

  private readonly step: Gauge;
  private readonly epoch: Gauge;
  private readonly lr: Gauge;
  private readonly loss: Gauge<'term'>;
  private readonly imagesPerS: Gauge;
  private readonly stepsTotal: Counter;
  private readonly phaseSeconds: Histogram<'phase'>;
  private readonly stepSeconds: Histogram;
  private readonly busBandwidth: Gauge<'op'>;
  private readonly collectiveBytes: Counter<'op'>;
  private readonly workersUpG: Gauge;
  private readonly workersExpectedG: Gauge;
  private readonly restarts: Counter<'reason'>;
  private readonly checkpointSeconds: Histogram<'kind'>;
  private readonly checkpointStep: Gauge;
  private readonly auroc: Gauge<'label'>;
  private readonly runPhase: Gauge<'phase'>;

  constructor(opts: TrainingMetricsOptions = {}) {
    this.now = opts.now ?? (() => Date.now());
    this.stallAfterS = opts.stallAfterS ?? 600;
    const registers = [this.registry];
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'cxr_' });
    this.step = new Gauge({ name: 'cxr_train_step', help: 'Last completed training step', registers });
    this.epoch = new Gauge({ name: 'cxr_train_epoch', help: 'Epoch (fractional) at the last step', registers });
    this.lr = new Gauge({ name: 'cxr_train_learning_rate', help: 'Learning rate at the last step', registers });
    this.loss = new Gauge({
      name: 'cxr_train_loss',
      help: 'Loss at the last step, per term (total, contrastive, classification, label_prior, ...)',
      labelNames: ['term'],
      registers,
    });
    this.imagesPerS = new Gauge({
      name: 'cxr_train_images_per_second',
      help: 'Training throughput over the last step, all workers',
      registers,
    });
    this.stepsTotal = new Counter({
      name: 'cxr_train_steps_total',
      help: 'Training steps completed by this coordinator process',
      registers,
    });
    this.phaseSeconds = new Histogram({
      name: 'cxr_step_phase_seconds',
      help: 'Time per step in each phase: compute, gather, reduce, data_wait',
      labelNames: ['phase'],
      buckets: PHASE_BUCKETS,
      registers,
    });
    this.stepSeconds = new Histogram({ name: 'cxr_step_seconds', help: 'Wall time per training step', buckets: PHASE_BUCKETS, registers });
    this.busBandwidth = new Gauge({
      name: 'cxr_collective_bus_bandwidth_bytes_per_second',
      help: 'Bus bandwidth of the last collective (nccl-tests convention; all-reduce: algbw * 2(n-1)/n)',
      labelNames: ['op'],
      registers,
    });
    this.collectiveBytes = new Counter({
      name: 'cxr_collective_bytes_total',
      help: 'Bytes reduced or gathered by collectives (message size, per rank)',
      labelNames: ['op'],
      registers,
    });
    this.workersUpG = new Gauge({ name: 'cxr_workers_up', help: 'Workers registered and healthy', registers });
    this.workersExpectedG = new Gauge({ name: 'cxr_workers_expected', help: 'Workers the job is configured for', registers });
    this.restarts = new Counter({
      name: 'cxr_restarts_total',
      help: 'Restarts of the training group after a failure, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.checkpointSeconds = new Histogram({
      name: 'cxr_checkpoint_duration_seconds',
      help: 'Checkpoint durations: save (all shards written and committed) and load',
      labelNames: ['kind'],
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers,
    });
    this.checkpointStep = new Gauge({ name: 'cxr_checkpoint_last_step', help: 'Step of the last committed checkpoint', registers });
    this.auroc = new Gauge({
      name: 'cxr_eval_auroc',
      help: 'AUROC of the last evaluation per label (label="mean" and "competition_mean" for the means)',
      labelNames: ['label'],
      registers,
    });
    this.runPhase = new Gauge({
      name: 'cxr_run_phase',
      help: 'Current phase of the run (1 for the current one)',
      labelNames: ['phase'],
      registers,
    });
    this.setPhase('starting');
  }

  /** Record one training step (call once per step, with its metrics.jsonl line). */
  observeStep(r: MetricsLine): void {
    this.step.set(r.step);
    if (typeof r.epoch === 'number') this.epoch.set(r.epoch);
    if (typeof r.lr === 'number') this.lr.set(r.lr);
    if (typeof r.images_per_s === 'number') this.imagesPerS.set(r.images_per_s);
    for (const [k, v] of Object.entries(r)) {
      if (typeof v !== 'number' || !Number.isFinite(v)) continue;
      if (k === 'loss') this.loss.set({ term: 'total' }, v);
      else if (k.startsWith('loss_')) this.loss.set({ term: k.slice(5) }, v);
    }
    let sum = 0,
      any = false;
    for (const phase of ['compute', 'gather', 'reduce', 'data_wait'] as const) {
      const v = r[`time_${phase}_s`];
      if (typeof v === 'number' && Number.isFinite(v)) {
        this.phaseSeconds.observe({ phase }, v);
        sum += v;
        any = true;
      }
    }
    const total = typeof r.time_step_s === 'number' ? r.time_step_s : any ? sum : null;
    if (total !== null) this.stepSeconds.observe(total);
    this.stepsTotal.inc();
    this.lastStep = r.step;
    this.lastStepAt = this.now();
    if (this.phase === 'starting') this.setPhase('training');
  }

  /**
   * Record one collective: `bytes` is the message size per rank, `ranks` the group size. Bus
   * bandwidth follows nccl-tests: algbw = bytes / seconds; all-reduce busbw = algbw * 2(n-1)/n,
   * reduce-scatter and all-gather busbw = algbw * (n-1)/n, broadcast busbw = algbw.
   */
  observeCollective(
    op: 'allreduce' | 'reduce_scatter' | 'all_gather' | 'broadcast',
    bytes: number,
    seconds: number,
    ranks: number,
  ): number {
    const algbw = seconds > 0 ? bytes / seconds : 0;
    const factor = op === 'allreduce' ? (2 * (ranks - 1)) / ranks : op === 'broadcast' ? 1 : (ranks - 1) / ranks;
    const busbw = algbw * factor;
    this.busBandwidth.set({ op }, busbw);
    this.collectiveBytes.inc({ op }, bytes);
    return busbw;
  }

  setWorkersUp(n: number): void {
    this.workersUp = n;
    this.workersUpG.set(n);
  }

  setWorkersExpected(n: number): void {
    this.workersExpected = n;
    this.workersExpectedG.set(n);
  }

  incRestarts(reason = 'worker_failed'): void {
    this.restarts.inc({ reason });
  }

  observeCheckpoint(kind: 'save' | 'load', seconds: number, step?: number): void {
    this.checkpointSeconds.observe({ kind }, seconds);
    if (kind === 'save' && typeof step === 'number') this.checkpointStep.set(step);
  }

  observeEval(ev: { auroc: Record<string, number | null>; mean_auroc: number | null; mean_auroc_competition: number | null }): void {
    for (const [label, v] of Object.entries(ev.auroc)) if (typeof v === 'number') this.auroc.set({ label }, v);
    if (typeof ev.mean_auroc === 'number') this.auroc.set({ label: 'mean' }, ev.mean_auroc);
    if (typeof ev.mean_auroc_competition === 'number') this.auroc.set({ label: 'competition_mean' }, ev.mean_auroc_competition);
  }

  setPhase(phase: RunPhase): void {
    this.phase = phase;
    for (const p of PHASES) this.runPhase.set({ phase: p }, p === phase ? 1 : 0);
  }

  health(): Health {
    const problems: string[] = [];
    const since = this.lastStepAt === null ? null : (this.now() - this.lastStepAt) / 1000;
    if (this.phase === 'failed') problems.push('the run failed');
    if (this.workersExpected !== null && this.workersUp < this.workersExpected && this.phase !== 'done' && this.phase !== 'starting') {
      problems.push(`${this.workersUp} of ${this.workersExpected} workers up`);
    }
    if (this.phase === 'training' && since !== null && since > this.stallAfterS) {
      problems.push(`no training step for ${Math.round(since)} s (stall threshold ${this.stallAfterS} s)`);
    }
    return {
      healthy: problems.length === 0,
      phase: this.phase,
      step: this.lastStep,
      workers_up: this.workersUp,
      workers_expected: this.workersExpected,
      seconds_since_last_step: since === null ? null : Math.round(since * 1000) / 1000,
      problems,
    };
  }
}

export interface MetricsServer {
  /** Base URL, e.g. http://127.0.0.1:9464 */
  url: string;
  port: number;
  close(): Promise<void>;
}

/**
 * Serve `metrics` on `GET /metrics` (Prometheus text format) and `GET /healthz`. Port 0 picks
 * a free port (see `port` on the result). A port in use is a UserError naming it.
 */
export async function serveMetrics(metrics: TrainingMetrics, opts: { port: number; host?: string }): Promise<MetricsServer> {
  const host = opts.host ?? '0.0.0.0';
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (e: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${(e as Error).message}\n`),
      );
    } else if (url === '/healthz') {
      const h = metrics.health();
      res.writeHead(h.healthy ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h) + '\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics or /healthz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EADDRINUSE')
        reject(new UserError(`metrics port ${opts.port} on ${host} is in use: choose another with --metrics-port (0 picks a free one)`));
      else if (e.code === 'EACCES')
        reject(
          new UserError(
            `metrics port ${opts.port}: permission denied (ports below 1024 need privileges); choose another with --metrics-port`,
          ),
        );
      else reject(e);
    });
    server.listen(opts.port, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const shownHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  return {
    url: `http://${shownHost}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((e) => (e ? reject(e) : resolve()));
      }),
  };
}
