import { Packr } from 'msgpackr';

/**
 * The data plane's messages (coordinator ROUTER <-> worker DEALER over ZeroMQ), documented in
 * proto/messages.md. Frame 1 of every message is a msgpackr-encoded header; a batch carries the
 * rank's slice as Arrow IPC bytes in frame 2.
 *
 * Flow control is credit-based: a worker grants `prefetch` credits in its hello and one more each
 * time its step loop takes a batch off its queue; the coordinator sends a batch only against a
 * credit. So at most `prefetch` batches per worker are ever queued or in flight, and a worker whose
 * steps are slower than the feed is never more than `prefetch` batches behind it.
 */
export const FEED_PROTOCOL_VERSION = 1;

export interface HelloMsg {
  readonly v: number;
  readonly type: 'hello';
  readonly rank: number;
  readonly generation: number;
  /** Initial credit: the worker's prefetch depth. */
  readonly credit: number;
}

export interface CreditMsg {
  readonly v: number;
  readonly type: 'credit';
  readonly rank: number;
  readonly generation: number;
  readonly n: number;
}

export interface BatchMsg {
  readonly v: number;
  readonly type: 'batch';
  readonly generation: number;
  /** Global step (counted from the start of training, across epochs). */
  readonly step: number;
  readonly epoch: number;
  /** Step within the epoch. */
  readonly epochStep: number;
  /** Rows of the training split in this slice, in order (frame 2 holds them in this order). */
  readonly indices: number[];
  /** Save a checkpoint after this step (the coordinator decides once per step, the same for every rank). */
  readonly checkpoint?: boolean;
  /** The job stops after this step (SIGINT/SIGTERM): it carries `checkpoint` too, and the end of data follows. */
  readonly final?: boolean;
}

export interface EndMsg {
  readonly v: number;
  readonly type: 'end';
  readonly generation: number;
  /** The first global step that will not be sent (the run's end). */
  readonly step: number;
}

export interface AbortMsg {
  readonly v: number;
  readonly type: 'abort';
  readonly generation: number;
  readonly reason: string;
}

export type WorkerToFeed = HelloMsg | CreditMsg;
export type FeedToWorker = BatchMsg | EndMsg | AbortMsg;

const packr = new Packr({ useRecords: false });

export function encodeHeader(m: WorkerToFeed | FeedToWorker): Buffer {
  return packr.pack(m);
}

/** Decode and check a header; `from` names the sender for the error. */
export function decodeHeader<T extends WorkerToFeed | FeedToWorker>(bytes: Uint8Array, allowed: readonly T['type'][], from: string): T {
  let m: unknown;
  try {
    m = packr.unpack(bytes);
  } catch (e) {
    throw new Error(`data plane: undecodable header from ${from}: ${(e as Error).message}`);
  }
  const o = m as { v?: unknown; type?: unknown };
  if (typeof o !== 'object' || o === null || typeof o.type !== 'string') throw new Error(`data plane: malformed header from ${from}`);
  if (o.v !== FEED_PROTOCOL_VERSION)
    throw new Error(
      `data plane: ${from} speaks protocol version ${String(o.v)}, this side ${FEED_PROTOCOL_VERSION}; run the same cxr-align version everywhere`,
    );
  if (!(allowed as readonly string[]).includes(o.type)) throw new Error(`data plane: unexpected '${o.type}' message from ${from}`);
  return m as T;
}
