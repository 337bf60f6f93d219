import { timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import {
  loadControlProto,
  type CheckpointShard,
  type Command,
  type ControlHandlers,
  type ParamsVerdict,
  type StepReport,
  type StepTimings,
} from '../../proto/control.js';
import type { Logger } from '../../shared/util/log.js';
import type { ShardWritten } from '../../shared/checkpoint/shard-writer.js';
import { UserError } from '../../shared/util/errors.js';

/** What the coordinator knows about one registered worker. */
export interface WorkerInfo {
  readonly rank: number;
  readonly host: string;
  readonly device: number;
  readonly pid: number;
  readonly collectiveEndpoint: string;
  readonly backend: string;
}

/** "rank 1 (host h, pid 123, device 1)": how errors name a worker. */
export function describeWorker(w: WorkerInfo): string {
  return `rank ${w.rank} (host ${w.host}, pid ${w.pid}${w.device >= 0 ? `, device ${w.device}` : ''})`;
}

/** One step over all ranks. */
export interface StepSummary {
  readonly step: number;
  readonly epoch: number;
  /** Rank 0's global loss values (every rank holds the same after the step's reduction). */
  readonly losses: Record<string, number>;
  /** Each counter summed over ranks. */
  readonly counters: Record<string, number>;
  readonly images: number;
  /** Per component, the slowest rank's seconds: the step waits for the slowest rank. */
  readonly timings: StepTimings;
  readonly paramsHash: string;
  readonly reports: readonly StepReport[];
}

export interface ControlServerOptions {
  /** "HOST:PORT"; port 0 picks a free one. */
  readonly listen: string;
  readonly token: string;
  readonly world: number;
  /** The resolved config handed to every worker at registration. */
  readonly configJson: string;
  readonly dataEndpoint: string;
  readonly generation: number;
  readonly heartbeatIntervalMs: number;
  /** A registered worker silent for longer than this fails the job, named. */
  readonly heartbeatTimeoutMs: number;
  readonly log: Logger;
  readonly onStep?: (s: StepSummary) => void;
  /** A rank wrote its checkpoint shard; the record is shaped for shared/checkpoint's commitCheckpoint. */
  readonly onCheckpointShard?: (s: ShardWritten) => void;
}

/**
 * The job failed; the message names the worker or ranks concerned. A UserError (exit code 1) so
 * the CLI prints the message, which already says everything, without a coordinator stack trace.
 */
export class JobFailure extends UserError {
  constructor(
    message: string,
    /** The rank at fault, when one is. */
    readonly rank?: number,
    /** The fault is the user's to fix (a worker reported a UserError). */
    readonly userError = false,
    /** A lost rank (exit, silence, disconnect, a failed collective): a fresh set of workers may go on from the last checkpoint. */
    readonly restartable = false,
  ) {
    super(message, 1);
    this.name = 'JobFailure';
  }
}

interface Pending<T> {
  readonly values: (T | undefined)[];
  count: number;
}

/**
 * The coordinator's gRPC control server: registration and rendezvous, heartbeats, params-hash
 * verification, step-report aggregation, checkpoint commits, errors and the command streams.
 *
 * The first failure (heartbeat timeout, a disconnect, a worker's error report, a parameter-hash
 * mismatch) settles `failure`; the job reacts by aborting the other workers.
 */
export class ControlServer {
  private readonly server = new grpc.Server({ 'grpc.max_receive_message_length': 16 << 20 });
  private readonly registered: (WorkerInfo | undefined)[];
  private readonly registerWaiters = new Map<number, (err: grpc.ServiceError | null, world?: WorkerInfo[]) => void>();
  private readonly lastSeen: number[];
  private readonly streams = new Map<number, grpc.ServerWritableStream<unknown, Command>>();
  private readonly stepReports = new Map<number, Pending<StepReport>>();
  private readonly paramHashes = new Map<number, Pending<string> & { callbacks: ((v: ParamsVerdict) => void)[] }>();
  private readonly lastStep: number[];
  private heartbeatTimer?: NodeJS.Timeout;
  private closing = false;
  private failed?: JobFailure;
  private abortReason?: string;
  private resolveFailure!: (f: JobFailure) => void;
  private resolveWorld!: (w: WorkerInfo[]) => void;
  private port = 0;

  /** Settles with the job's first failure; never rejects. */
  readonly failure: Promise<JobFailure>;
  /** Resolves with every worker, by rank, once all have registered. */
  readonly world: Promise<WorkerInfo[]>;

  constructor(private readonly opts: ControlServerOptions) {
    this.registered = new Array(opts.world).fill(undefined);
    this.lastSeen = new Array(opts.world).fill(0);
    this.lastStep = new Array(opts.world).fill(-1);
    this.failure = new Promise((r) => (this.resolveFailure = r));
    this.world = new Promise((r) => (this.resolveWorld = r));
    this.server.addService(loadControlProto().service, this.handlers());
  }

  /** Bind and serve; resolves with the bound port. */
  async start(): Promise<number> {
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(this.opts.listen, grpc.ServerCredentials.createInsecure(), (err, port) =>
        err ? reject(new Error(`control plane: cannot listen on ${this.opts.listen}: ${err.message}`)) : resolve(port),
      ),
    );
    this.heartbeatTimer = setInterval(
      () => this.checkHeartbeats(),
      Math.max(50, Math.min(this.opts.heartbeatIntervalMs, this.opts.heartbeatTimeoutMs / 4)),
    );
    this.heartbeatTimer.unref();
    return this.port;
  }

  get boundPort(): number {
    return this.port;
  }

  workers(): WorkerInfo[] {
    return this.registered.filter((w): w is WorkerInfo => w !== undefined);
  }

  /** Fail the job from outside (a child process died, the data feed broke). First failure wins. */
  fail(f: JobFailure): void {
    if (this.failed || this.closing) return;
    this.failed = f;
    this.opts.log.error({ rank: f.rank }, f.message);
    this.resolveFailure(f);
    for (const [, waiter] of this.registerWaiters) waiter(status(grpc.status.ABORTED, `job failed: ${f.message}`));
    this.registerWaiters.clear();
  }

  /** Tell every connected worker to stop (non-zero exit on their side). */
  abortAll(reason: string): void {
    // Heartbeat replies carry it too: they reach a worker whose main thread is blocked.
    this.abortReason ??= reason;
    this.broadcast({ command: 'abort', abort: { reason } });
  }

  /** Tell every worker the job is over, wait until their command streams close (or `graceMs`), stop serving. */
  async shutdown(reason: string, graceMs = 5000): Promise<void> {
    if (!this.closing) this.broadcast({ command: 'shutdown', shutdown: { reason } });
    await this.close(graceMs);
  }

  /** Stop serving: the open streams are ended, the port is released. */
  async close(graceMs = 2000): Promise<void> {
    this.closing = true;
    clearInterval(this.heartbeatTimer);
    const deadline = Date.now() + graceMs;
    while (this.streams.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const [, s] of this.streams) s.end();
    this.streams.clear();
    await new Promise<void>((resolve) => {
      const t = setTimeout(
        () => {
          this.server.forceShutdown();
          resolve();
        },
        Math.max(100, deadline - Date.now()),
      );
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private broadcast(c: Command): void {
    for (const [, s] of this.streams) s.write(c);
  }

  private checkHeartbeats(): void {
    if (this.closing || this.failed) return;
    const now = Date.now();
    for (const w of this.registered) {
      if (!w) continue;
      const silent = now - this.lastSeen[w.rank]!;
      if (silent > this.opts.heartbeatTimeoutMs) {
        this.fail(
          new JobFailure(
            `worker ${describeWorker(w)} sent no heartbeat for ${(silent / 1000).toFixed(1)} s (timeout ${(this.opts.heartbeatTimeoutMs / 1000).toFixed(1)} s; last completed step ${this.lastStep[w.rank]}): it is hung or its host is unreachable`,
            w.rank,
            false,
            true,
          ),
        );
        return;
      }
    }
  }

  /** A request of a rank that is registered in this generation, or the error to answer with. */
  private checkRank(rank: number, generation: number): grpc.ServiceError | null {
    if (generation !== this.opts.generation)
      return status(
        grpc.status.FAILED_PRECONDITION,
        `generation ${generation} is stale; this job is at generation ${this.opts.generation}`,
      );
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.opts.world || !this.registered[rank])
      return status(grpc.status.FAILED_PRECONDITION, `rank ${rank} is not registered in this job`);
    this.lastSeen[rank] = Date.now();
    return null;
  }

  private handlers(): ControlHandlers {
    return {
      Register: (call, cb) => {
        const req = call.request;
        const who = `host ${req.host || '?'}, pid ${req.pid}${req.device >= 0 ? `, device ${req.device}` : ''}`;
        if (!tokenMatches(req.jobToken, this.opts.token)) {
          this.opts.log.warn(`refused a worker (${who}): wrong job token`);
          return cb(
            status(
              grpc.status.PERMISSION_DENIED,
              `job token refused: the worker's --token (or CXR_JOB_TOKEN) does not match this coordinator's`,
            ),
          );
        }
        // Every refusal is logged here too, naming the worker: the operator sees who was turned away.
        const refuse = (code: grpc.status, why: string) => {
          this.opts.log.warn(`refused a worker (${who}): ${why}`);
          cb(status(code, why));
        };
        if (this.failed) return refuse(grpc.status.ABORTED, `job failed: ${this.failed.message}`);
        if (this.registerWaiters.size + this.workers().length === 0 && this.closing)
          return cb(status(grpc.status.UNAVAILABLE, 'coordinator is shutting down'));
        let rank = req.requestedRank;
        if (rank >= 0) {
          if (rank >= this.opts.world)
            return refuse(
              grpc.status.INVALID_ARGUMENT,
              `requested rank ${rank} is outside 0..${this.opts.world - 1} (world size ${this.opts.world})`,
            );
          if (this.registered[rank])
            return refuse(grpc.status.ALREADY_EXISTS, `rank ${rank} is already taken by ${describeWorker(this.registered[rank]!)}`);
        } else {
          rank = this.registered.indexOf(undefined);
          if (rank < 0)
            return refuse(
              grpc.status.RESOURCE_EXHAUSTED,
              `all ${this.opts.world} ranks are taken; this job wants exactly ${this.opts.world} workers`,
            );
        }
        if (!req.collectiveEndpoint) return refuse(grpc.status.INVALID_ARGUMENT, 'collective_endpoint is empty');
        const info: WorkerInfo = {
          rank,
          host: req.host,
          device: req.device,
          pid: req.pid,
          collectiveEndpoint: req.collectiveEndpoint,
          backend: req.backend,
        };
        this.registered[rank] = info;
        this.lastSeen[rank] = Date.now();
        this.opts.log.info(
          `registered ${describeWorker(info)} at ${info.collectiveEndpoint}${info.backend ? `, backend ${info.backend}` : ''} (${this.workers().length}/${this.opts.world})`,
        );
        // Until the world is complete, a worker that goes away gives its rank back (a restarted pod re-registers).
        const onCancel = () => {
          if (this.registerWaiters.delete(rank) && this.registered[rank] === info) {
            this.registered[rank] = undefined;
            this.opts.log.warn(`${describeWorker(info)} left before the rendezvous completed; rank ${rank} is free again`);
          }
        };
        call.on('cancelled', onCancel);
        this.registerWaiters.set(rank, (err, world) => {
          call.off('cancelled', onCancel);
          if (err) return cb(err);
          cb(null, {
            rank,
            worldSize: this.opts.world,
            peerEndpoints: world!.map((w) => w.collectiveEndpoint),
            configJson: this.opts.configJson,
            dataEndpoint: this.opts.dataEndpoint,
            generation: this.opts.generation,
            heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
          });
        });
        if (this.workers().length === this.opts.world) {
          const world = this.registered as WorkerInfo[];
          const now = Date.now();
          for (let r = 0; r < world.length; r++) this.lastSeen[r] = now;
          for (const [, w] of this.registerWaiters) w(null, world);
          this.registerWaiters.clear();
          this.resolveWorld(world);
        }
      },

      Heartbeat: (call, cb) => {
        const err = this.checkRank(call.request.rank, call.request.generation);
        if (err) return cb(err);
        this.lastStep[call.request.rank] = call.request.step;
        cb(null, { abortReason: this.abortReason ?? '' });
      },

      VerifyParams: (call, cb) => {
        const { rank, generation, step, sha256 } = call.request;
        const err = this.checkRank(rank, generation);
        if (err) return cb(err);
        let p = this.paramHashes.get(step);
        if (!p) this.paramHashes.set(step, (p = { values: new Array(this.opts.world).fill(undefined), count: 0, callbacks: [] }));
        if (p.values[rank] !== undefined)
          return cb(status(grpc.status.ALREADY_EXISTS, `rank ${rank} already sent its parameter hash for step ${step}`));
        p.values[rank] = sha256;
        p.count++;
        p.callbacks.push((v) => cb(null, v));
        if (p.count === this.opts.world) {
          this.paramHashes.delete(step);
          const mismatch = hashMismatch(p.values as string[], step);
          if (mismatch) this.fail(new JobFailure(mismatch));
          else
            this.opts.log.info(`step ${step}: all ${this.opts.world} ranks hold identical parameters (sha256 ${sha256.slice(0, 16)}...)`);
          for (const f of p.callbacks) f({ ok: mismatch === null, message: mismatch ?? '' });
        }
      },

      ReportStep: (call, cb) => {
        const r = call.request;
        const err = this.checkRank(r.rank, r.generation);
        if (err) return cb(err);
        this.lastStep[r.rank] = r.step;
        cb(null, {});
        let p = this.stepReports.get(r.step);
        if (!p) this.stepReports.set(r.step, (p = { values: new Array(this.opts.world).fill(undefined), count: 0 }));
        if (p.values[r.rank] !== undefined) return this.fail(new JobFailure(`rank ${r.rank} reported step ${r.step} twice`, r.rank));
        p.values[r.rank] = r;
        p.count++;
        if (p.count === this.opts.world) {
          this.stepReports.delete(r.step);
          this.completeStep(p.values as StepReport[]);
        }
      },

      CommitCheckpoint: (call, cb) => {
        const err = this.checkRank(call.request.rank, call.request.generation);
        if (err) return cb(err);
        this.opts.onCheckpointShard?.(shardWritten(call.request));
        cb(null, {});
      },

      ReportError: (call, cb) => {
        const r = call.request;
        cb(null, {});
        const w = this.registered[r.rank];
        const who = w ? describeWorker(w) : `rank ${r.rank}`;
        this.fail(new JobFailure(`worker ${who} failed: ${r.message}`, r.rank, r.userError, !r.userError));
      },

      Commands: (call) => {
        const { rank, generation } = call.request;
        const err = this.checkRank(rank, generation);
        if (err) return call.destroy(err);
        this.streams.set(rank, call);
        if (this.failed) call.write({ command: 'abort', abort: { reason: this.failed.message } });
        call.on('cancelled', () => {
          if (this.streams.get(rank) !== call) return;
          this.streams.delete(rank);
          if (this.closing) return;
          const w = this.registered[rank]!;
          this.fail(
            new JobFailure(
              `worker ${describeWorker(w)} disconnected from the control plane (last completed step ${this.lastStep[rank]})`,
              rank,
              false,
              true,
            ),
          );
        });
      },
    };
  }

  private completeStep(reports: StepReport[]): void {
    const first = reports[0]!;
    const epochs = new Set(reports.map((r) => r.epoch));
    if (epochs.size > 1)
      return this.fail(
        new JobFailure(`step ${first.step}: ranks disagree on the epoch (${reports.map((r) => `rank ${r.rank}: ${r.epoch}`).join(', ')})`),
      );
    const hashes = reports.map((r) => r.paramsHash);
    if (hashes.some((h) => h !== '')) {
      const mismatch = hashMismatch(hashes, first.step);
      if (mismatch) return this.fail(new JobFailure(mismatch));
    }
    const counters: Record<string, number> = {};
    for (const r of reports) for (const [k, v] of Object.entries(r.counters)) counters[k] = (counters[k] ?? 0) + v;
    const timings: StepTimings = { compute: 0, gather: 0, reduce: 0, dataWait: 0, total: 0 };
    for (const r of reports)
      for (const k of Object.keys(timings) as (keyof StepTimings)[]) timings[k] = Math.max(timings[k], r.timings?.[k] ?? 0);
    this.opts.onStep?.({
      step: first.step,
      epoch: first.epoch,
      losses: first.losses,
      counters,
      images: reports.reduce((s, r) => s + r.images, 0),
      timings,
      paramsHash: first.paramsHash,
      reports,
    });
  }
}

/** null when every rank sent the same hash; otherwise a sentence naming which ranks hold which. */
export function hashMismatch(hashes: readonly string[], step: number): string | null {
  const groups = new Map<string, number[]>();
  hashes.forEach((h, rank) => groups.set(h, [...(groups.get(h) ?? []), rank]));
  if (groups.size <= 1) return null;
  const parts = [...groups].map(
    ([h, ranks]) => `rank${ranks.length > 1 ? 's' : ''} ${ranks.join(', ')}: ${h ? h.slice(0, 16) + '...' : '(none)'}`,
  );
  return `parameter hashes differ at step ${step}, so the replicas have diverged (${parts.join('; ')})`;
}

/** The control-plane record back in the checkpoint writer's shape. */
export function shardWritten(c: CheckpointShard): ShardWritten {
  return {
    file: c.path,
    path: c.hostPath,
    rank: c.rank,
    world: c.world,
    step: c.step,
    start: c.start,
    end: c.end,
    bytes: c.bytes,
    digest: c.sha256,
    seconds: c.seconds,
  };
}

function tokenMatches(got: string, want: string): boolean {
  const a = Buffer.from(got);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

function status(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}
