import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { UserError } from '../../shared/util/errors.js';
import { ANSWERED } from './interrupt.js';
import { CollectiveError } from './errors.js';
import type { DataPath, ProcessGroupOptions } from './options.js';
import { ProcessGroup } from './process-group.js';

/**
 * The body of a worker's comm thread (threaded-group.ts has the main thread's handle): it owns
 * the ProcessGroup and with it every collective socket, and runs the collectives the main thread
 * asks for, in the order asked. Its event loop is free while the main thread computes, so a
 * collective makes progress (and answers peers) even while a TensorFlow.js kernel holds the main
 * thread; and the main thread can block on a collective (`Atomics.wait`), which a tape that cannot
 * span an await needs.
 *
 * Requests come in on parentPort, one kind of answer per request: asynchronous ones go back on
 * parentPort, synchronous ones on `syncPort` followed by storing the request id in the ANSWERED word and
 * waking the blocked main thread. Errors travel as plain fields and are rebuilt on the other side.
 */
export interface CommThreadData {
  readonly options: ProcessGroupOptions;
  /** The words of interrupt.ts: ANSWERED (last synchronous request answered on syncPort) and INTERRUPT. */
  readonly signal: SharedArrayBuffer;
  readonly syncPort: MessagePort;
}

export type CommRequest =
  | { readonly id: number; readonly sync: boolean; readonly op: 'allGatherV'; readonly buf: Float32Array; readonly counts: number[] }
  | { readonly id: number; readonly sync: false; readonly op: 'allGatherVInPlace'; readonly buf: Float32Array; readonly counts: number[] }
  | { readonly id: number; readonly sync: false; readonly op: 'allReduce' | 'reduceScatter'; readonly buf: Float32Array }
  | { readonly id: number; readonly sync: false; readonly op: 'close'; readonly flush: boolean };

export interface WireError {
  readonly message: string;
  readonly kind: 'collective' | 'user' | 'error';
  readonly code?: string;
  readonly peer?: number;
}

export type CommReply = { readonly id: number; readonly result?: Float32Array; readonly error?: WireError };
export type CommEvent = { readonly ready: true; readonly dataPath: DataPath } | { readonly startError: WireError };

export function toWireError(e: unknown): WireError {
  if (e instanceof CollectiveError)
    return { message: e.message, kind: 'collective', code: e.code, ...(e.peer !== undefined ? { peer: e.peer } : {}) };
  if (e instanceof UserError) return { message: e.message, kind: 'user' };
  return { message: e instanceof Error ? (e.stack ?? e.message) : String(e), kind: 'error' };
}

if (parentPort && (workerData as Partial<CommThreadData> | null)?.signal) {
  const port = parentPort;
  const d = workerData as CommThreadData;
  const signal = new Int32Array(d.signal);
  const answer = (req: CommRequest, reply: CommReply, transfer: ArrayBuffer[] = []): void => {
    if (req.sync) {
      d.syncPort.postMessage(reply, transfer);
      Atomics.store(signal, ANSWERED, req.id);
      Atomics.notify(signal, ANSWERED);
    } else {
      port.postMessage(reply, transfer);
    }
  };
  let pg: ProcessGroup | null = null;
  const run = (req: CommRequest): void => {
    if (req.op === 'close') {
      // Collectives already asked for run first: ProcessGroup queues them in call order.
      void (pg ? pg.close({ flush: req.flush }) : Promise.resolve())
        .then(
          () => port.postMessage({ id: req.id } satisfies CommReply),
          (e: unknown) => port.postMessage({ id: req.id, error: toWireError(e) } satisfies CommReply),
        )
        .finally(() => {
          // Nothing else keeps the thread alive: it ends.
          d.syncPort.close();
          port.close();
        });
      return;
    }
    const g = pg!;
    let p: Promise<Float32Array>;
    try {
      if (req.op === 'allGatherV') p = g.allGatherV(req.buf, req.counts);
      else if (req.op === 'allGatherVInPlace') p = g.allGatherVInPlace(req.buf, req.counts).then(() => req.buf);
      else if (req.op === 'allReduce') p = g.allReduce(req.buf).then(() => req.buf);
      else p = g.reduceScatter(req.buf).then(() => req.buf);
    } catch (e) {
      // Answered like any failure: a blocked main thread must hear of it, not wait out its bound.
      p = Promise.reject(e);
    }
    p.then(
      (result) => answer(req, { id: req.id, result }, [result.buffer as ArrayBuffer]),
      (e: unknown) => answer(req, { id: req.id, error: toWireError(e) }),
    );
  };
  // The main thread sends requests only after `ready`.
  port.on('message', run);
  ProcessGroup.create(d.options).then(
    (g) => {
      pg = g;
      port.postMessage({ ready: true, dataPath: g.dataPath } satisfies CommEvent);
    },
    (e: unknown) => {
      port.postMessage({ startError: toWireError(e) } satisfies CommEvent);
      d.syncPort.close();
      port.close();
    },
  );
}
