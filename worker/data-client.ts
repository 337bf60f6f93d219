import * as zmq from 'zeromq';
import { decodeHeader, encodeHeader, FEED_PROTOCOL_VERSION, type BatchMsg, type FeedToWorker, type WorkerToFeed } from '../proto/feed.js';
import { errorMessage } from '../shared/util/errors.js';
import type { SampleBatch } from '../shared/dataset/columns.js';

/** One rank's slice of one step, as it came off the wire. */
export interface FeedBatch {
  readonly header: BatchMsg;
  /** Arrow IPC bytes of the slice's rows. */
  readonly payload: Uint8Array;
  /** The slice decoded and prepared by the client's `prepare` (augmented), when it has one. */
  readonly batch?: SampleBatch;
  /** Seconds the step loop waited for this batch (0 when it was already queued). */
  readonly waitSeconds: number;
  /** Batches queued (this one included) when the step loop took it: `prefetch` means the feed is ahead. */
  readonly queued: number;
}

export type FeedItem = ({ kind: 'batch' } & FeedBatch) | { kind: 'end'; step: number };

/** A batch as queued: its preparation, started on arrival, may still be running. */
type Queued = ({ kind: 'batch'; prepared?: Promise<SampleBatch> } & FeedBatch) | { kind: 'end'; step: number };

/** The coordinator aborted the data feed. */
export class FeedAborted extends Error {
  constructor(reason: string) {
    super(`the coordinator aborted the data feed: ${reason}`);
    this.name = 'FeedAborted';
  }
}

export interface DataClientOptions {
  readonly endpoint: string;
  readonly rank: number;
  readonly generation: number;
  /** Batches the feed may have queued or in flight for this rank. */
  readonly prefetch: number;
  /**
   * Started on each batch as it arrives (decoding and augmenting it in a thread), so that it runs
   * while the step loop computes; `next()` waits for it, and that wait counts as data wait.
   */
  readonly prepare?: (header: BatchMsg, payload: Uint8Array) => Promise<SampleBatch>;
}

/**
 * A worker's end of the data plane: a DEALER that grants the coordinator `prefetch` credits on
 * connect and one more each time `next()` hands a batch to the step loop, so the next batches are
 * already here when a step ends and at most `prefetch` are ever queued.
 */
export class DataClient {
  private readonly dealer: zmq.Dealer;
  private readonly queue: Queued[] = [];
  private waiter?: { resolve: (i: Queued) => void; reject: (e: Error) => void };
  private error?: Error;
  private sending: Promise<void> = Promise.resolve();
  private closed = false;
  private expectedStep = -1;

  constructor(private readonly opts: DataClientOptions) {
    if (!Number.isInteger(opts.prefetch) || opts.prefetch < 1)
      throw new RangeError(`data client: prefetch must be a positive integer, got ${opts.prefetch}`);
    this.dealer = new zmq.Dealer({ routingId: `rank-${opts.rank}`, linger: 0, receiveHighWaterMark: 0 });
  }

  /** Connect and grant the initial credit. ZeroMQ connects lazily, so this succeeds before the feed is up. */
  async start(): Promise<void> {
    this.dealer.connect(this.opts.endpoint);
    void this.receive();
    await this.send({
      v: FEED_PROTOCOL_VERSION,
      type: 'hello',
      rank: this.opts.rank,
      generation: this.opts.generation,
      credit: this.opts.prefetch,
    });
  }

  /** The next batch in step order, or the end of the data; throws when the feed aborts or breaks. */
  async next(): Promise<FeedItem> {
    const t0 = performance.now();
    let item = this.queue.shift();
    // Batches only: an end-of-data marker behind them takes no credit and is not a batch ahead.
    const queued = item ? this.queue.length + 1 - (this.queue.at(-1)?.kind === 'end' ? 1 : 0) : 0;
    if (!item) {
      if (this.error) throw this.error;
      item = await new Promise<Queued>((resolve, reject) => (this.waiter = { resolve, reject }));
    }
    if (item.kind === 'end') return item;
    void this.send({ v: FEED_PROTOCOL_VERSION, type: 'credit', rank: this.opts.rank, generation: this.opts.generation, n: 1 }).catch((e) =>
      this.setError(new Error(`data client: granting credit failed: ${errorMessage(e)}`)),
    );
    const { prepared, ...got } = item;
    const batch = prepared ? await prepared : undefined;
    return { ...got, ...(batch ? { batch } : {}), waitSeconds: (performance.now() - t0) / 1000, queued: Math.max(queued, 1) };
  }

  close(): void {
    this.closed = true;
    this.dealer.close();
  }

  private async receive(): Promise<void> {
    try {
      for await (const [header, payload] of this.dealer) {
        const m = decodeHeader<FeedToWorker>(header!, ['batch', 'end', 'abort'], 'the coordinator');
        if (m.generation !== this.opts.generation) continue;
        if (m.type === 'abort') throw new FeedAborted(m.reason);
        if (m.type === 'batch') {
          if (this.expectedStep >= 0 && m.step !== this.expectedStep)
            throw new Error(`data client: got step ${m.step}, expected ${this.expectedStep}`);
          this.expectedStep = m.step + 1;
          if (!payload) throw new Error(`data client: step ${m.step} arrived without its data frame`);
          const prepared = this.opts.prepare?.(m, payload);
          prepared?.catch(() => {}); // rethrown by next()
          this.push({ kind: 'batch', header: m, payload, waitSeconds: 0, queued: 0, ...(prepared ? { prepared } : {}) });
        } else this.push({ kind: 'end', step: m.step });
      }
    } catch (e) {
      if (!this.closed) this.setError(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private push(item: Queued): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(item);
    } else this.queue.push(item);
  }

  private setError(e: Error): void {
    if (this.error) return;
    this.error = e;
    // An abort overrides whatever is still queued: the step loop must stop now, not drain.
    if (e instanceof FeedAborted) this.queue.length = 0;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.reject(e);
    }
  }

  private send(m: WorkerToFeed): Promise<void> {
    const next = this.sending.then(() => this.dealer.send(encodeHeader(m)));
    this.sending = next.catch(() => {});
    return next;
  }
}
