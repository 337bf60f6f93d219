import { parentPort, workerData } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';
import { loadControlProto, type HeartbeatReply, type HeartbeatRequest } from '../proto/control.js';

/**
 * Heartbeats from a thread of their own. A training step holds the main thread for seconds at a
 * time (TensorFlow.js kernels run synchronously), and a heartbeat timer there would fall silent
 * exactly while the worker is busiest. A worker that is really stuck is still caught: a stopped
 * process stops this thread too, a lost host stops its packets, and a collective waiting on a dead
 * peer times out on its own.
 *
 * The thread is started before registration (its module loading and connection overlap the
 * rendezvous) and beats once it gets `{ begin }`. Messages in: `{ begin }`, `{ step }`, `{ stop }`.
 * Messages out: `{ type: 'lost', reason }` when no heartbeat got through for silenceMs.
 */
/** workerData: where to send. */
export interface HeartbeatThreadData {
  readonly address: string;
}

/** The message that starts the beats, once registration has given this worker its rank. */
export interface HeartbeatBegin {
  readonly begin: { readonly rank: number; readonly generation: number; readonly intervalMs: number; readonly silenceMs: number };
}

const d = workerData as HeartbeatThreadData;
// Loaded and connected while the worker is still registering, so the beats start at once after.
const { Client } = loadControlProto();
const client = new Client(d.address, grpc.credentials.createInsecure(), { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 });
let step = -1;
let lastOk = Date.now();
let inFlight = false;
let lost = false;
let timer: NodeJS.Timeout | undefined;
parentPort!.on('message', (m: { step?: number; stop?: boolean } & Partial<HeartbeatBegin>) => {
  if (typeof m.step === 'number') step = m.step;
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
    const req: HeartbeatRequest = { rank: b.rank, generation: b.generation, step };
    client.Heartbeat(req, { deadline: Date.now() + b.silenceMs }, (err: grpc.ServiceError | null, _res?: HeartbeatReply) => {
      inFlight = false;
      if (!err) {
        lastOk = Date.now();
        return;
      }
      if (Date.now() - lastOk > b.silenceMs || err.code === grpc.status.FAILED_PRECONDITION) {
        lost = true;
        parentPort!.postMessage({ type: 'lost', reason: `no heartbeat got through for ${((Date.now() - lastOk) / 1000).toFixed(1)} s (${err.details ?? err.message})` });
      }
    });
  };
  beat();
  timer = setInterval(beat, b.intervalMs);
}
