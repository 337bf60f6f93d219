import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { interruptSignal } from './collectives/interrupt.js';
import * as grpc from '@grpc/grpc-js';
import { loadControlProto, type HeartbeatReply, type HeartbeatRequest } from '../proto/control.js';

/**
 * Heartbeats from a thread of their own. A training step holds the main thread for seconds at a
 * time (TensorFlow.js kernels run synchronously), and a heartbeat timer there would fall silent
 * exactly while the worker is busiest. A worker that is really stuck is still caught: a stopped
 * process stops this thread too, a lost host stops its packets, and a collective waiting on a dead
 * peer times out on its own.
 *
 * The same independence carries the coordinator's abort to a main thread blocked in a collective
 * (`Atomics.wait` in the in-tape all-gather, which a stalled peer would hold for the group's whole
 * timeout): the heartbeat reply says when the job is aborted, and this thread then sets the
 * interrupt word of every group signal buffer it was given and wakes the main thread, after
 * posting the reason on `abortPort`, which the main thread reads without its event loop. Losing
 * the coordinator (no heartbeat through for silenceMs) stops the main thread the same way.
 *
 * The thread is started before registration (its module loading and connection overlap the
 * rendezvous) and beats once it gets `{ begin }`. Messages in: `{ begin }`,
 * `{ watch: SharedArrayBuffer }`, `{ stop }`. The last reported step is read from `stepWord` when
 * a beat goes out, not posted per step: a message per step woke this thread once a step, and on a
 * machine whose cores all run ranks that wake-up is taken from a rank. Messages out:
 * `{ type: 'lost', reason }` when no heartbeat got through for silenceMs, `{ type: 'abort', reason }`
 * when a reply carried the abort.
 */
/** workerData: where to send, and where the abort reason goes. */
export interface HeartbeatThreadData {
  readonly address: string;
  readonly abortPort: MessagePort;
  /** Int32 [1]: the last step the worker reported (-1 before the first), written by the main thread. */
  readonly stepWord: SharedArrayBuffer;
}

/** What the heartbeat thread posts on `abortPort` before it interrupts the main thread. */
export interface StopReason {
  readonly kind: 'abort' | 'lost';
  readonly reason: string;
}

/** The message that starts the beats, once registration has given this worker its rank. */
export interface HeartbeatBegin {
  readonly begin: { readonly rank: number; readonly generation: number; readonly intervalMs: number; readonly silenceMs: number };
}

const d = workerData as HeartbeatThreadData;
// Loaded and connected while the worker is still registering, so the beats start at once after.
const { Client } = loadControlProto();
const client = new Client(d.address, grpc.credentials.createInsecure(), {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1000,
});
const step = new Int32Array(d.stepWord);
let lastOk = Date.now();
let inFlight = false;
let lost = false;
let timer: NodeJS.Timeout | undefined;
let stopped: StopReason | null = null;
const watched: SharedArrayBuffer[] = [];
parentPort!.on('message', (m: { stop?: boolean; watch?: SharedArrayBuffer } & Partial<HeartbeatBegin>) => {
  if (m.watch) {
    watched.push(m.watch);
    if (stopped !== null) interruptSignal(m.watch);
  }
  if (m.begin && !timer) begin(m.begin);
  if (m.stop) {
    clearInterval(timer);
    client.close();
    parentPort!.close();
  }
});
parentPort!.postMessage({ type: 'ready' });

function begin(b: HeartbeatBegin['begin']): void {
  lastOk = Date.now();
  const beat = () => {
    if (inFlight || lost) return;
    inFlight = true;
    const req: HeartbeatRequest = { rank: b.rank, generation: b.generation, step: Atomics.load(step, 0) };
    client.Heartbeat(req, { deadline: Date.now() + b.silenceMs }, (err: grpc.ServiceError | null, res?: HeartbeatReply) => {
      inFlight = false;
      if (!err) {
        lastOk = Date.now();
        if (res?.abortReason && stopped === null) {
          stop({ kind: 'abort', reason: res.abortReason });
          parentPort!.postMessage({ type: 'abort', reason: res.abortReason });
        }
        return;
      }
      if (Date.now() - lastOk > b.silenceMs || err.code === grpc.status.FAILED_PRECONDITION) {
        lost = true;
        const reason = `no heartbeat got through for ${((Date.now() - lastOk) / 1000).toFixed(1)} s (${err.details ?? err.message})`;
        // A main thread blocked in a collective must hear this too: the orphan stops either way.
        stop({ kind: 'lost', reason });
        parentPort!.postMessage({ type: 'lost', reason });
      }
    });
  };
  beat();
  timer = setInterval(beat, b.intervalMs);
}

/** The coordinator aborted the job or is lost: the reason first (the woken main thread reads it), then the wake-up. */
function stop(why: StopReason): void {
  stopped = why;
  d.abortPort.postMessage(why);
  for (const sab of watched) interruptSignal(sab);
}
