import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';
import {
  loadControlProto,
  type CheckpointShard,
  type Command,
  type ControlClient,
  type ParamsVerdict,
  type RegisterReply,
  type RegisterRequest,
  type StepReport,
} from '../proto/control.js';
import type { ShardWritten } from '../shared/checkpoint/shard-writer.js';
import type { HeartbeatBegin, HeartbeatThreadData, StopReason } from './heartbeat-thread.js';
import { interruptSignal } from './collectives/interrupt.js';
import type { Interrupter } from './collectives/threaded-group.js';
import { UserError, errorMessage } from '../shared/util/errors.js';
import type { Logger } from '../shared/util/log.js';

export interface ConnectOptions {
  /** "HOST:PORT" of the coordinator's control plane. */
  readonly address: string;
  readonly request: RegisterRequest;
  /** Give up when the coordinator has not answered for this long (it may not exist yet: Kubernetes). */
  readonly connectTimeoutMs: number;
  readonly log: Logger;
  /**
   * The pid of the coordinator that started this worker as its child (launcher's
   * CXR_COORDINATOR_PID), if it did. A failed attempt is not retried once that process is gone (this
   * worker re-parented): it may have died after counting this registration but before answering it.
   */
  readonly parentPid?: number;
  /** First retry delay; doubles per attempt up to `maxBackoffMs`. */
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
}

/** Codes meaning "the coordinator is not (yet) there": retry. Everything else is an answer. */
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

/**
 * Register with the coordinator, retrying with exponential backoff (and jitter, so a fleet of
 * workers started together does not knock in step) while it cannot be resolved or reached, for at
 * most `connectTimeoutMs`. Register itself blocks until every rank has joined.
 *
 * Each attempt uses a fresh channel: a channel that failed to resolve or connect keeps grpc-js's
 * own, much longer, resolver and reconnect backoff.
 */
export async function register(opts: ConnectOptions): Promise<ControlSession> {
  const { Client } = loadControlProto();
  const { port1: abortPort, port2 } = new MessageChannel();
  const stepWord = new SharedArrayBuffer(4);
  new Int32Array(stepWord)[0] = -1;
  const heartbeats = new Worker(new URL('./heartbeat-thread.js', import.meta.url), {
    workerData: { address: opts.address, abortPort: port2, stepWord } satisfies HeartbeatThreadData,
    transferList: [port2],
  });
  try {
    return await registerWith(Client, { thread: heartbeats, abortPort, step: new Int32Array(stepWord) }, opts);
  } catch (e) {
    void heartbeats.terminate();
    abortPort.close();
    throw e;
  }
}

async function registerWith(
  Client: ReturnType<typeof loadControlProto>['Client'],
  heartbeats: HeartbeatLine,
  opts: ConnectOptions,
): Promise<ControlSession> {
  const deadline = Date.now() + opts.connectTimeoutMs;
  let backoff = opts.initialBackoffMs ?? 100;
  const maxBackoff = opts.maxBackoffMs ?? 5000;
  for (let attempt = 1; ; attempt++) {
    const client = new Client(opts.address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
    try {
      const reply = await unary<RegisterRequest, RegisterReply>(client, 'Register', opts.request, {});
      return new ControlSession(client, heartbeats, reply, opts.log);
    } catch (e) {
      client.close();
      const code = (e as grpc.ServiceError).code;
      if (code === grpc.status.PERMISSION_DENIED)
        throw new UserError(`coordinator at ${opts.address} refused this worker: ${(e as grpc.ServiceError).details}`);
      // An answer (rank taken, job full, job failed): the coordinator's reason is the whole message.
      if (!RETRYABLE.has(code))
        throw new UserError(
          `coordinator at ${opts.address} refused this worker: ${(e as grpc.ServiceError).details ?? errorMessage(e)}`,
          1,
        );
      if (opts.parentPid !== undefined && process.ppid !== opts.parentPid) {
        throw new UserError(
          `the coordinator that started this worker (pid ${opts.parentPid}) is gone: registration failed (${(e as grpc.ServiceError).details}) and is not retried`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0)
        throw new UserError(
          `no coordinator answered at ${opts.address} within ${(opts.connectTimeoutMs / 1000).toFixed(1)} s (${attempt} attempts; last error: ${(e as grpc.ServiceError).details}); check --coordinator, or raise --connect-timeout`,
        );
      const wait = Math.min(left, backoff * (0.5 + Math.random() / 2));
      opts.log.debug(
        `coordinator at ${opts.address} not reachable (${(e as grpc.ServiceError).details}); retry ${attempt} in ${Math.round(wait)} ms`,
      );
      await new Promise((r) => setTimeout(r, wait));
      backoff = Math.min(maxBackoff, backoff * 2);
    }
  }
}

/** The heartbeat thread and the port it posts the coordinator's abort reason on. */
interface HeartbeatLine {
  readonly thread: Worker;
  readonly abortPort: MessagePort;
  /** The heartbeat thread's stepWord. */
  readonly step: Int32Array;
}

/** How a worker ends when the coordinator aborts the job (exit non-zero, nothing reported back). */
export class AbortedByCoordinator extends Error {
  constructor(readonly reason: string) {
    super(`aborted by the coordinator: ${reason}`);
  }
}

const CHANNEL_OPTIONS: grpc.ClientOptions = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1000,
  'grpc.max_receive_message_length': 16 << 20,
};

/**
 * A registered worker's line to the coordinator: heartbeats, reports, the command stream.
 * `lost` settles when the coordinator goes away (stream broken, heartbeats failing for longer
 * than the allowed silence): the worker then stops instead of training on as an orphan.
 *
 * It is also the Interrupter of the worker's collective groups: the coordinator's abort, heard on
 * the command stream (main thread) or in a heartbeat reply (heartbeat thread, which works while
 * the main thread is blocked in a collective), sets their interrupt words.
 */
export class ControlSession implements Interrupter {
  readonly rank: number;
  readonly generation: number;
  private commands?: grpc.ClientReadableStream<Command>;
  private closed = false;
  private resolveCommand!: (c: Command | { command: 'lost'; reason: string }) => void;
  /** The first command (shutdown or abort), or the loss of the coordinator. */
  readonly command: Promise<Command | { command: 'lost'; reason: string }>;

  private readonly heartbeats: Worker;
  private readonly abortPort: MessagePort;
  /** Shared with the heartbeat thread: the last reported step. */
  private readonly stepWord: Int32Array;
  private stopReason: StopReason | null = null;
  private readonly watched: SharedArrayBuffer[] = [];

  constructor(
    private readonly client: ControlClient,
    line: HeartbeatLine,
    readonly reply: RegisterReply,
    private readonly log: Logger,
  ) {
    this.heartbeats = line.thread;
    this.abortPort = line.abortPort;
    this.stepWord = line.step;
    this.rank = reply.rank;
    this.generation = reply.generation;
    this.command = new Promise((r) => (this.resolveCommand = r));
  }

  /**
   * Open the command stream and start heartbeats (from a thread of their own, see
   * heartbeat-thread.ts); `silenceMs` without a successful heartbeat counts as losing the coordinator.
   */
  start(silenceMs: number): void {
    this.commands = this.client.Commands({ rank: this.rank, generation: this.generation });
    this.commands.on('data', (c: Command) => {
      if (c.command === 'abort') this.aborted(c.abort.reason);
      this.resolveCommand(c);
    });
    this.commands.on('error', (e: grpc.ServiceError) => {
      if (!this.closed) this.resolveCommand({ command: 'lost', reason: `command stream broke: ${e.details ?? e.message}` });
    });
    this.commands.on('end', () => {
      if (!this.closed) this.resolveCommand({ command: 'lost', reason: 'the coordinator closed the command stream' });
    });
    const begin: HeartbeatBegin = {
      begin: { rank: this.rank, generation: this.generation, intervalMs: this.reply.heartbeatIntervalMs, silenceMs },
    };
    this.heartbeats.postMessage(begin);
    this.heartbeats.on('message', (m: { type: string; reason: string }) => {
      if (this.closed) return;
      if (m.type === 'lost') this.resolveCommand({ command: 'lost', reason: m.reason });
      if (m.type === 'abort') {
        this.aborted(m.reason);
        this.resolveCommand({ command: 'abort', abort: { reason: m.reason } });
      }
    });
    this.heartbeats.on('error', (e) => {
      if (!this.closed) this.resolveCommand({ command: 'lost', reason: `heartbeat thread failed: ${e.message}` });
    });
  }

  /** Interrupter: the heartbeat thread (and this session) will interrupt the group with this signal buffer on an abort. */
  watch(signal: SharedArrayBuffer): void {
    this.watched.push(signal);
    this.heartbeats.postMessage({ watch: signal });
    if (this.stopReason !== null) interruptSignal(signal);
  }

  /**
   * Interrupter: why the groups were interrupted (the coordinator's abort, or its loss), read
   * without the event loop: the main thread may be blocked.
   */
  error(): Error | null {
    if (this.stopReason === null) {
      const m = receiveMessageOnPort(this.abortPort);
      if (m) this.stopReason = m.message as StopReason;
    }
    if (this.stopReason === null) return null;
    return this.stopReason.kind === 'abort'
      ? new AbortedByCoordinator(this.stopReason.reason)
      : new Error(`lost the coordinator: ${this.stopReason.reason}`);
  }

  private aborted(reason: string): void {
    if (this.stopReason !== null) return;
    this.stopReason = { kind: 'abort', reason };
    for (const s of this.watched) interruptSignal(s);
  }

  verifyParams(step: number, sha256: string): Promise<ParamsVerdict> {
    return unary(this.client, 'VerifyParams', { rank: this.rank, generation: this.generation, step, sha256 }, {});
  }

  async reportStep(r: Omit<StepReport, 'rank' | 'generation'>): Promise<void> {
    Atomics.store(this.stepWord, 0, r.step);
    await unary(this.client, 'ReportStep', { ...r, rank: this.rank, generation: this.generation }, { deadline: Date.now() + 30_000 });
  }

  /** Phase one of the checkpoint commit: this rank's shard is written and fsynced (the checkpoint writer's report). */
  async commitCheckpoint(w: ShardWritten): Promise<void> {
    if (w.rank !== this.rank) throw new Error(`checkpoint shard of rank ${w.rank} reported by rank ${this.rank}`);
    const s: CheckpointShard = {
      rank: this.rank,
      generation: this.generation,
      step: w.step,
      path: w.file,
      sha256: w.digest,
      bytes: w.bytes,
      world: w.world,
      start: w.start,
      end: w.end,
      hostPath: w.path,
      seconds: w.seconds,
    };
    await unary(this.client, 'CommitCheckpoint', s, { deadline: Date.now() + 30_000 });
  }

  /** Best effort: the worker is failing anyway, so a lost coordinator must not hide the original error. */
  async reportError(e: unknown): Promise<void> {
    try {
      await unary(
        this.client,
        'ReportError',
        {
          rank: this.rank,
          generation: this.generation,
          message: errorMessage(e),
          stack: (e as Error)?.stack ?? '',
          userError: e instanceof UserError,
        },
        { deadline: Date.now() + 5000 },
      );
    } catch (err) {
      this.log.warn(`could not report the error to the coordinator: ${errorMessage(err)}`);
    }
  }

  close(): void {
    this.closed = true;
    this.heartbeats.postMessage({ stop: true });
    void this.heartbeats.terminate();
    this.abortPort.close();
    this.commands?.cancel();
    this.client.close();
  }
}

function unary<Req, Res>(client: ControlClient, method: keyof ControlClient, req: Req, options: grpc.CallOptions): Promise<Res> {
  return new Promise((resolve, reject) =>
    (client[method] as unknown as (r: Req, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => void).call(
      client,
      req,
      options,
      (err, res) => (err ? reject(err) : resolve(res!)),
    ),
  );
}
