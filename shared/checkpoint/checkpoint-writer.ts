import { Worker } from 'node:worker_threads';
import { writeShard, type ShardData, type ShardWritten } from './shard-writer.js';
import { UserError } from '../util/errors.js';

export interface SaveOptions {
  /**
   * false: the arrays are the caller's to give away (e.g. fresh `dataSync()` copies); whole-buffer
   * arrays are transferred to the writer thread without a copy and are detached afterwards.
   * Default true: copy now, so the caller may keep training on the originals at once.
   */
  readonly copy?: boolean;
}

export interface WriterStats {
  saves: number;
  /** Time save() blocked its caller (the copy-out), last and total, in ms. */
  lastStallMs: number;
  totalStallMs: number;
  lastWriteSeconds: number;
}

interface Pending {
  resolve(r: ShardWritten): void;
  reject(e: Error): void;
}

/**
 * Background shard writer for one rank. `save()` copies the slices out (the only time training is
 * blocked) and returns at once; the write, checksums and fsync run in a worker thread, one save at
 * a time in order. `idle()` waits for every queued save and rethrows the first failure: call it
 * before the next save and at the end of the run, and report the shard to the coordinator once
 * its promise resolves.
 */
export class CheckpointWriter {
  readonly stats: WriterStats = { saves: 0, lastStallMs: 0, totalStallMs: 0, lastWriteSeconds: 0 };
  private worker: Worker | null = null;
  private readonly inline: boolean;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private outstanding = new Set<Promise<unknown>>();
  private failure: Error | null = null;
  private inlineChain: Promise<unknown> = Promise.resolve();
  /**
   * Staging buffers of finished saves, reused by the next copy-out: copying into pages that are
   * already mapped costs a memcpy, while fresh allocations pay a page fault per 4 KiB (measured
   * 4-5x slower here; docs/performance.md "## Checkpoints").
   */
  private spare: ArrayBuffer[] = [];
  private readonly keepBuffers: boolean;

  /**
   * inline: write on this thread instead (tools and tests that have nothing else to do meanwhile).
   * keepBuffers (default true): keep one shard's staging copy between saves to make the copy-out cheap.
   */
  constructor(opts: { inline?: boolean; keepBuffers?: boolean } = {}) {
    this.inline = opts.inline ?? false;
    this.keepBuffers = opts.keepBuffers ?? true;
  }

  save(stepDir: string, data: ShardData, opts: SaveOptions = {}): Promise<ShardWritten> {
    const t0 = performance.now();
    const copy = opts.copy ?? true;
    const transfer: ArrayBuffer[] = [];
    const staged: ArrayBuffer[] = [];
    const own = <T extends Float32Array | Uint8Array>(a: T): T => {
      const whole = a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && a.buffer instanceof ArrayBuffer;
      if (!copy && whole) {
        if (!transfer.includes(a.buffer as ArrayBuffer)) transfer.push(a.buffer as ArrayBuffer);
        return a;
      }
      const buf = this.takeSpare(a.byteLength);
      transfer.push(buf);
      staged.push(buf);
      const out = (a instanceof Float32Array ? new Float32Array(buf, 0, a.length) : new Uint8Array(buf, 0, a.length)) as T;
      out.set(a as never);
      return out;
    };
    const job: ShardData = {
      ...data,
      params: own(data.params),
      m: own(data.m),
      v: own(data.v),
      ...(data.extra ? { extra: own(data.extra) } : {}),
    };
    const stall = performance.now() - t0;
    this.stats.saves++;
    this.stats.lastStallMs = stall;
    this.stats.totalStallMs += stall;

    let p: Promise<ShardWritten>;
    if (this.inline) {
      p = this.inlineChain.then(() => writeShard(stepDir, job)).finally(() => this.giveBack(staged));
      this.inlineChain = p.catch(() => {});
    } else {
      const w = this.ensureWorker();
      const id = this.nextId++;
      p = new Promise<ShardWritten>((resolve, reject) => this.pending.set(id, { resolve, reject }));
      w.ref();
      w.postMessage({ id, stepDir, data: job }, transfer);
    }
    p = p.then((r) => {
      this.stats.lastWriteSeconds = r.seconds;
      return r;
    });
    const tracked = p.catch((e: Error) => {
      this.failure ??= e;
    });
    this.outstanding.add(tracked);
    void tracked.finally(() => {
      this.outstanding.delete(tracked);
      if (this.outstanding.size === 0) this.worker?.unref();
    });
    return p;
  }

  /** Resolves when every queued save is durable; rejects with the first failure since the last idle(). */
  async idle(): Promise<void> {
    while (this.outstanding.size > 0) await Promise.all([...this.outstanding]);
    const f = this.failure;
    this.failure = null;
    if (f) throw f;
  }

  async close(): Promise<void> {
    try {
      await this.idle();
    } finally {
      const w = this.worker;
      this.worker = null;
      if (w) await w.terminate();
    }
  }

  /** The smallest spare buffer that fits, or a new one. */
  private takeSpare(bytes: number): ArrayBuffer {
    let best = -1;
    this.spare.forEach((b, i) => {
      if (b.byteLength >= bytes && (best < 0 || b.byteLength < this.spare[best]!.byteLength)) best = i;
    });
    if (best < 0) return new ArrayBuffer(bytes);
    return this.spare.splice(best, 1)[0]!;
  }

  private giveBack(buffers: readonly ArrayBuffer[]): void {
    if (!this.keepBuffers) return;
    for (const b of buffers) if (b.byteLength > 0) this.spare.push(b);
    // A shard needs at most four (params, m, v, extra); keep the largest few.
    this.spare = this.spare.sort((a, b) => b.byteLength - a.byteLength).slice(0, 4);
  }

  /** Drop the kept staging buffers (e.g. before evaluation needs the memory). */
  releaseBuffers(): void {
    this.spare = [];
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./writer-thread.js', import.meta.url));
    w.on('message', (msg: { id: number; ok: boolean; result?: ShardWritten; error?: string; user?: boolean; buffers?: ArrayBuffer[] }) => {
      if (msg.buffers) this.giveBack(msg.buffers);
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result!);
      // A full disk is the user's to fix (a UserError, so no restart tries again); anything else is a failure of the save.
      else p.reject(msg.user ? new UserError(msg.error!, 1) : new Error(`checkpoint shard write failed: ${msg.error}`));
    });
    const failAll = (e: Error) => {
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
      this.worker = null;
    };
    w.on('error', (e) => failAll(new Error(`checkpoint writer thread crashed: ${e.message}`)));
    w.on('exit', (code) => {
      if (this.pending.size > 0) failAll(new Error(`checkpoint writer thread exited (code ${code}) with saves pending`));
    });
    w.unref();
    this.worker = w;
    return w;
  }
}
