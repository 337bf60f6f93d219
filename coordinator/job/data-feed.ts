import * as zmq from 'zeromq';
import type { Sampler } from './sampler.js';
import { decodeHeader, encodeHeader, FEED_PROTOCOL_VERSION, type FeedToWorker, type WorkerToFeed } from '../../proto/feed.js';
import { errorMessage } from '../../shared/util/errors.js';
import type { Logger } from '../../shared/util/log.js';

/** Where the feed's rows come from: the training split, encoded for the wire. */
export interface RowSource {
  /** Rows in the training split. */
  readonly size: number;
  /** Arrow IPC bytes of exactly these rows, in this order. */
  encode(indices: Uint32Array): Promise<Uint8Array>;
}

export interface DataFeedOptions {
  /** ZeroMQ endpoint to bind, e.g. "tcp://127.0.0.1:*" or "tcp://0.0.0.0:5555". */
  readonly bind: string;
  readonly world: number;
  readonly generation: number;
  readonly sampler: Sampler;
  readonly source: RowSource;
  /** Global steps [startStep, endStep) are fed; startStep > 0 resumes. */
  readonly startStep: number;
  readonly endStep: number;
  /** The most credit a worker may hold (its prefetch depth); more is a protocol error. */
  readonly prefetch: number;
  /** Whether the ranks save a checkpoint after global step `step` (asked once per step, in step order). */
  readonly checkpointAfter?: (step: number) => boolean;
  readonly log: Logger;
}

export interface RankFeedStats {
  /** Batches sent. */
  sent: number;
  /** Credit granted and not yet used. */
  credit: number;
  /** The most batches this rank has ever had sent but not yet taken by its step loop. */
  maxAhead: number;
}

/**
 * The coordinator's data plane: streams each rank its slice of every global batch, in step order,
 * as Arrow IPC over a ZeroMQ ROUTER socket, only against credit the rank granted.
 *
 * Each rank has its own cursor and reads its own slice, so a slow rank never makes the
 * coordinator hold batches for it: per rank there is at most one slice being read and encoded,
 * and nothing is read before a credit exists to send it.
 */
export class DataFeed {
  private readonly router = new zmq.Router({ sendHighWaterMark: 0, linger: 0 });
  private readonly routes: (Buffer | undefined)[];
  private readonly cursor: number[];
  private readonly decisions = new Map<number, { save: boolean; left: number }>();
  private readonly stats: RankFeedStats[];
  private readonly pumping: boolean[];
  private readonly endSent: boolean[];
  private sending: Promise<void> = Promise.resolve();
  private closed = false;
  private resolveFailure!: (e: Error) => void;
  /** Settles with the feed's first failure (a read error, a protocol violation); never rejects. */
  readonly failure: Promise<Error>;
  private endpoint = '';
  /** The first step not fed: endStep, or one past the stop step once `stopEarly` moved it. */
  private end: number;

  constructor(private readonly opts: DataFeedOptions) {
    if (opts.startStep < 0 || opts.endStep < opts.startStep)
      throw new RangeError(`data feed: steps [${opts.startStep}, ${opts.endStep}) are not a range`);
    this.routes = new Array(opts.world).fill(undefined);
    this.cursor = new Array(opts.world).fill(opts.startStep);
    this.stats = Array.from({ length: opts.world }, () => ({ sent: 0, credit: 0, maxAhead: 0 }));
    this.pumping = new Array(opts.world).fill(false);
    this.endSent = new Array(opts.world).fill(false);
    this.failure = new Promise((r) => (this.resolveFailure = r));
    this.end = opts.endStep;
  }

  /**
   * End the job early, at the first step no rank has been sent yet: that step is fed with a
   * checkpoint and as the final one, then the end of data. Steps already sent (at most the
   * prefetch depth ahead of each rank) still run, so every rank stops at the same step. Returns
   * that step, or null when every step is already out (the run ends as planned).
   */
  stopEarly(): number | null {
    const next = Math.max(...this.cursor);
    if (next >= this.end - 1) return null;
    this.end = next + 1;
    for (let r = 0; r < this.opts.world; r++) void this.pump(r);
    return next;
  }

  /** Bind; resolves with the endpoint workers connect to (the port filled in when it was "*"). */
  async start(): Promise<string> {
    try {
      await this.router.bind(this.opts.bind);
    } catch (e) {
      throw new Error(`data feed: cannot bind ${this.opts.bind}: ${errorMessage(e)}`);
    }
    this.endpoint = this.router.lastEndpoint!;
    void this.receive();
    return this.endpoint;
  }

  statsOf(rank: number): Readonly<RankFeedStats> {
    return { ...this.stats[rank]! };
  }

  /** Tell every connected rank to stop. */
  async abort(reason: string): Promise<void> {
    for (let r = 0; r < this.opts.world; r++)
      if (this.routes[r])
        await this.send(r, { v: FEED_PROTOCOL_VERSION, type: 'abort', generation: this.opts.generation, reason }).catch(() => {});
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.sending.catch(() => {});
    this.router.close();
  }

  private fail(e: Error): void {
    if (this.closed) return;
    this.opts.log.error(e.message);
    this.resolveFailure(e);
  }

  private async receive(): Promise<void> {
    try {
      for await (const [id, header] of this.router) {
        if (!id || !header) continue;
        let m: WorkerToFeed;
        try {
          m = decodeHeader<WorkerToFeed>(header, ['hello', 'credit'], `worker ${id.toString()}`);
        } catch (e) {
          this.fail(e as Error);
          continue;
        }
        this.onMessage(id, m);
      }
    } catch (e) {
      if (!this.closed) this.fail(new Error(`data feed: receive failed: ${errorMessage(e)}`));
    }
  }

  private onMessage(id: Buffer, m: WorkerToFeed): void {
    if (m.generation !== this.opts.generation) {
      this.opts.log.warn(`data feed: ignoring a '${m.type}' of stale generation ${m.generation} from rank ${m.rank}`);
      return;
    }
    const rank = m.rank;
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.opts.world)
      return this.fail(new Error(`data feed: message from rank ${rank}, outside 0..${this.opts.world - 1}`));
    const n = m.type === 'hello' ? m.credit : m.n;
    if (m.type === 'hello') {
      if (this.routes[rank] && !this.routes[rank]!.equals(id))
        return this.fail(new Error(`data feed: rank ${rank} said hello twice (from two sockets)`));
      this.routes[rank] = id;
    } else if (!this.routes[rank]) return this.fail(new Error(`data feed: credit from rank ${rank} before its hello`));
    const s = this.stats[rank]!;
    if (!Number.isInteger(n) || n < 1 || s.credit + n > this.opts.prefetch)
      return this.fail(
        new Error(`data feed: rank ${rank} granted ${n} credit on top of ${s.credit}; the prefetch depth is ${this.opts.prefetch}`),
      );
    s.credit += n;
    void this.pump(rank);
  }

  /** Send rank `rank` as many slices as it has credit for, in step order, one read at a time. */
  private async pump(rank: number): Promise<void> {
    if (this.pumping[rank]) return;
    this.pumping[rank] = true;
    const s = this.stats[rank]!;
    try {
      while (!this.closed && s.credit > 0 && this.cursor[rank]! < this.end) {
        const step = this.cursor[rank]!;
        const pos = this.opts.sampler.positionAt(step);
        const indices = this.opts.sampler.rankSlice(pos, this.opts.world, rank);
        let payload: Uint8Array;
        try {
          payload = await this.opts.source.encode(indices);
        } catch (e) {
          throw new Error(`data feed: reading rank ${rank}'s slice of step ${step} (epoch ${pos.epoch}) failed: ${errorMessage(e)}`);
        }
        s.credit--;
        this.cursor[rank] = step + 1;
        s.sent++;
        s.maxAhead = Math.max(s.maxAhead, this.opts.prefetch - s.credit);
        await this.send(
          rank,
          {
            v: FEED_PROTOCOL_VERSION,
            type: 'batch',
            generation: this.opts.generation,
            step,
            epoch: pos.epoch,
            epochStep: pos.step,
            indices: Array.from(indices),
            ...(this.checkpointAfter(step) || step === this.end - 1 ? { checkpoint: true } : {}),
            ...(step === this.end - 1 && this.end < this.opts.endStep ? { final: true } : {}),
          },
          payload,
        );
      }
      // End-of-data is a message of its own, not a credit-consuming batch: the worker may be at full queue.
      if (!this.closed && this.cursor[rank] === this.end && !this.endSent[rank]) {
        this.endSent[rank] = true;
        await this.send(rank, { v: FEED_PROTOCOL_VERSION, type: 'end', generation: this.opts.generation, step: this.end });
      }
    } catch (e) {
      this.fail(e as Error);
    } finally {
      this.pumping[rank] = false;
    }
  }

  /**
   * Whether ranks save after `step`: asked of the caller once per step, when the first rank's
   * slice goes out, and remembered until every rank has had it, so all ranks get the same answer
   * even from a clock-based rule.
   */
  private checkpointAfter(step: number): boolean {
    if (!this.opts.checkpointAfter) return false;
    let d = this.decisions.get(step);
    if (!d) {
      d = { save: this.opts.checkpointAfter(step), left: this.opts.world };
      this.decisions.set(step, d);
    }
    if (--d.left === 0) this.decisions.delete(step);
    return d.save;
  }

  /** One send in flight on the socket at a time (zeromq.js sends zero-copy and allows one pending send). */
  private send(rank: number, header: FeedToWorker, payload?: Uint8Array): Promise<void> {
    const id = this.routes[rank]!;
    const frames = payload ? [id, encodeHeader(header), payload] : [id, encodeHeader(header)];
    const next = this.sending.then(() => this.router.send(frames));
    this.sending = next.catch(() => {});
    return next;
  }
}
