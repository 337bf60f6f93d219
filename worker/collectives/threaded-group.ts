import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { UserError } from '../../shared/util/errors.js';
import type { CommEvent, CommReply, CommRequest, CommThreadData, WireError } from './comm-thread.js';
import { ANSWERED, INTERRUPT, SIGNAL_BYTES } from './interrupt.js';
import { CollectiveError, type CollectiveErrorCode } from './errors.js';
import { DEFAULT_TIMEOUT_MS, type DataPath, type ProcessGroupOptions } from './options.js';

/**
 * How much longer than the group's timeout a blocked main thread waits for the comm thread: the
 * group itself fails a collective after `timeoutMs` without progress with an error naming the
 * peer, so this only fires when the thread itself is gone or stuck.
 */
const THREAD_GRACE_MS = 10_000;

const live = new Set<ThreadedProcessGroup>();

/**
 * Something outside the main thread (the coordinator's abort, heard by the heartbeat thread) that
 * can stop a main thread blocked in `allGatherVSync`: the group hands it its signal buffer
 * (`watch`), and it calls `interruptSignal` (interrupt.ts) on it from any thread, after which
 * `error()` says why.
 */
export interface Interrupter {
  watch(signal: SharedArrayBuffer): void;
  /** Why the group was interrupted, once it has been (else null). */
  error(): Error | null;
}

/**
 * A ProcessGroup run by a thread of its own (comm-thread.ts), as the training step uses it: the
 * collectives are the ProcessGroup's (same order rules, same bits, same errors), asked for from
 * the main thread either asynchronously or, for `allGatherVSync`, by blocking the main thread
 * until the result is there (`Atomics.wait`, bounded). All requests run in call order, the
 * synchronous ones among the others.
 *
 * Buffers cross threads: arguments are copied, except that `reduceScatter` takes its buffer over
 * (the caller's array is detached) and hands back the same memory; results are moved, not copied.
 *
 * A thread holding ZeroMQ sockets must end before the process does (the process aborts in
 * libzmq's teardown otherwise): `close()` every group, or `closeAllThreadedGroups()` before
 * `process.exit`.
 */
export class ThreadedProcessGroup {
  readonly rank: number;
  readonly world: number;
  readonly timeoutMs: number;
  /** Which path bulk data takes on this rank's ring links (set once the thread has handshaken). */
  dataPath: DataPath | null = null;
  private readonly signal: Int32Array;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(r: Float32Array | undefined): void; reject(e: Error): void }>();
  /** Set once the thread is unusable (failed to start, exited, closed): every later request fails with it. */
  private dead: Error | null = null;
  private closing: Promise<void> | null = null;
  private readonly exited: Promise<void>;
  private hasExited = false;

  private constructor(
    private readonly thread: Worker,
    private readonly syncPort: MessagePort,
    signal: SharedArrayBuffer,
    opts: ProcessGroupOptions,
    private readonly interrupter: Interrupter | null,
  ) {
    this.rank = opts.rank;
    this.world = opts.world;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.signal = new Int32Array(signal);
    this.exited = new Promise((resolve) =>
      thread.once('exit', () => {
        this.hasExited = true;
        resolve();
      }),
    );
    thread.on('message', (m: CommReply) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.error) w.reject(fromWire(m.error));
      else w.resolve(m.result);
    });
    const gone = (why: string) => {
      this.dead ??= new CollectiveError(`rank ${this.rank}: the comm thread ${why}`, 'broken');
      for (const w of this.waiting.values()) w.reject(this.dead);
      this.waiting.clear();
      live.delete(this);
    };
    thread.on('error', (e) => gone(`failed: ${e.stack ?? e.message}`));
    thread.on('exit', (code) => gone(`exited (code ${code})`));
  }

  /** Starts the thread, which binds, connects and handshakes (ProcessGroup.create); rejects with its error. */
  static async create(opts: ProcessGroupOptions, interrupter?: Interrupter): Promise<ThreadedProcessGroup> {
    const signal = new SharedArrayBuffer(SIGNAL_BYTES);
    const { port1, port2 } = new MessageChannel();
    const data: CommThreadData = { options: opts, signal, syncPort: port2 };
    const thread = new Worker(new URL('./comm-thread.js', import.meta.url), { workerData: data, transferList: [port2] });
    const g = new ThreadedProcessGroup(thread, port1, signal, opts, interrupter ?? null);
    live.add(g);
    interrupter?.watch(signal);
    const started = await new Promise<CommEvent>((resolve, reject) => {
      const onMessage = (m: CommEvent | CommReply) => {
        if ('ready' in m || 'startError' in m) {
          thread.off('message', onMessage);
          thread.off('exit', onExit);
          resolve(m);
        }
      };
      const onExit = (code: number) =>
        reject(new CollectiveError(`rank ${opts.rank}: the comm thread exited (code ${code}) while starting`, 'broken'));
      thread.on('message', onMessage);
      thread.once('exit', onExit);
    });
    if ('startError' in started) {
      await g.exited;
      throw fromWire(started.startError);
    }
    g.dataPath = started.dataPath;
    return g;
  }

  /** In-place sum over ranks (copied to the thread and back: meant for small buffers). */
  async allReduce(buf: Float32Array): Promise<void> {
    buf.set((await this.request({ op: 'allReduce', buf }))!);
  }

  /**
   * Sums over ranks; `buf` is taken over (detached) and the same memory comes back, holding the
   * sum in this rank's shardRange(buf.length, world, rank) and scratch elsewhere.
   */
  async reduceScatter(buf: Float32Array): Promise<Float32Array> {
    ownsBuffer(buf, 'reduceScatter');
    return (await this.request({ op: 'reduceScatter', buf }, [buf.buffer as ArrayBuffer]))!;
  }

  /** Rank-order concatenation; rank r contributes `counts[r]` elements. */
  async allGatherV(local: Float32Array, counts: readonly number[]): Promise<Float32Array> {
    return (await this.request({ op: 'allGatherV', buf: local, counts: [...counts] }))!;
  }

  /**
   * ProcessGroup.allGatherVInPlace: `buf` holds this rank's part at its offset; it is taken over
   * (detached) and the same memory comes back holding every rank's part.
   */
  async allGatherVInPlace(buf: Float32Array, counts: readonly number[]): Promise<Float32Array> {
    ownsBuffer(buf, 'allGatherVInPlace');
    return (await this.request({ op: 'allGatherVInPlace', buf, counts: [...counts] }, [buf.buffer as ArrayBuffer]))!;
  }

  /**
   * allGatherV with the main thread blocked until the result is there: for code that cannot
   * await (inside a TensorFlow.js tape). Collectives asked for earlier run first. Throws the
   * group's error (a timeout or a lost peer, naming the rank) or, if the thread does not answer
   * within the group's timeout plus a grace, a timeout error.
   */
  allGatherVSync(local: Float32Array, counts: readonly number[]): Float32Array {
    if (this.dead) throw this.dead;
    if (this.closing) throw new CollectiveError(`rank ${this.rank}: allGatherV on a closed process group`, 'closed');
    const id = this.nextId++;
    const before = Atomics.load(this.signal, ANSWERED);
    this.thread.postMessage({ id, sync: true, op: 'allGatherV', buf: local, counts: [...counts] } satisfies CommRequest);
    const limit = this.timeoutMs + THREAD_GRACE_MS;
    const deadline = performance.now() + limit;
    let seen = before;
    while (seen !== id) {
      if (this.interrupted()) {
        // The comm thread still runs the gather; close() drops it without waiting for the peers.
        this.dead = this.interrupter?.error() ?? new CollectiveError(`rank ${this.rank}: allGatherV interrupted`, 'aborted');
        throw this.dead;
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        this.dead = new CollectiveError(
          `rank ${this.rank}: allGatherV: the comm thread gave no answer within ${limit} ms (the group's timeout is ${this.timeoutMs} ms): it is stuck or gone`,
          'timeout',
        );
        throw this.dead;
      }
      Atomics.wait(this.signal, ANSWERED, seen, left);
      seen = Atomics.load(this.signal, ANSWERED);
    }
    const got = receiveMessageOnPort(this.syncPort)?.message as CommReply | undefined;
    if (!got || got.id !== id)
      throw new CollectiveError(
        `rank ${this.rank}: allGatherV: the comm thread answered request ${got?.id ?? 'none'} to request ${id}`,
        'protocol',
      );
    if (got.error) throw fromWire(got.error);
    return got.result!;
  }

  /** Whether the interrupter has stopped this group (the coordinator aborted the job). */
  interrupted(): boolean {
    return Atomics.load(this.signal, INTERRUPT) !== 0;
  }

  /**
   * Closes the group (ProcessGroup.close: waits at most the timeout for the peers to have
   * everything) and ends the thread. A thread that gave no answer before (stuck) gets the same
   * bound once more; after that this resolves without it. An interrupted group (the job is
   * aborted, a peer may be stalled) closes its sockets without waiting for the peers.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.hasExited) {
        const id = this.nextId++;
        const done = new Promise<void>((resolve) => this.waiting.set(id, { resolve: () => resolve(), reject: () => resolve() }));
        this.thread.postMessage({ id, sync: false, op: 'close', flush: !this.interrupted() } satisfies CommRequest);
        let timer: NodeJS.Timeout | undefined;
        const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.timeoutMs + THREAD_GRACE_MS)));
        await Promise.race([done.then(() => this.exited), bound]);
        clearTimeout(timer);
      }
      this.syncPort.close();
      live.delete(this);
    })();
    return this.closing;
  }

  private request(
    req:
      | { op: 'allGatherV' | 'allGatherVInPlace'; buf: Float32Array; counts: number[] }
      | { op: 'allReduce' | 'reduceScatter'; buf: Float32Array },
    transfer: ArrayBuffer[] = [],
  ): Promise<Float32Array | undefined> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.closing) return Promise.reject(new CollectiveError(`rank ${this.rank}: ${req.op} on a closed process group`, 'closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.thread.postMessage({ ...req, id, sync: false } as CommRequest, transfer);
    });
  }
}

/** Closes every group still open (before process.exit, which would abort in libzmq's teardown). */
export async function closeAllThreadedGroups(): Promise<void> {
  await Promise.all([...live].map((g) => g.close()));
}

/** Whether `buf` spans its whole ArrayBuffer, so that it can be moved to the comm thread and back. */
export function spansBuffer(buf: Float32Array): boolean {
  return buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength;
}

function ownsBuffer(buf: Float32Array, what: string): void {
  if (!spansBuffer(buf))
    throw new RangeError(`${what}: the array must span its whole ArrayBuffer (it is moved to the comm thread, not copied)`);
}

function fromWire(e: WireError): Error {
  if (e.kind === 'collective') return new CollectiveError(e.message, e.code as CollectiveErrorCode, e.peer);
  if (e.kind === 'user') return new UserError(e.message);
  return new Error(e.message);
}
