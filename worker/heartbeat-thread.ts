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
 * workerData: { address, rank, generation, intervalMs, silenceMs }. Messages in: { step }.
 * Messages out: { type: 'lost', reason } when no heartbeat got through for silenceMs.
 */
export interface HeartbeatThreadData {
  readonly address: string;
  readonly rank: number;
  readonly generation: number;
  readonly intervalMs: number;
  readonly silenceMs: number;
}

const d = workerData as HeartbeatThreadData;
const { Client } = loadControlProto();
const client = new Client(d.address, grpc.credentials.createInsecure(), { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 });
let step = -1;
let lastOk = Date.now();
let inFlight = false;
let lost = false;
parentPort!.on('message', (m: { step?: number; stop?: boolean }) => {
  if (typeof m.step === 'number') step = m.step;
  if (m.stop) {
    clearInterval(timer);
    client.close();
    parentPort!.close();
  }
});
const timer = setInterval(() => {
  if (inFlight || lost) return;
  inFlight = true;
  const req: HeartbeatRequest = { rank: d.rank, generation: d.generation, step };
  client.Heartbeat(req, { deadline: Date.now() + d.silenceMs }, (err: grpc.ServiceError | null, _res?: HeartbeatReply) => {
    inFlight = false;
    if (!err) {
      lastOk = Date.now();
      return;
    }
    if (Date.now() - lastOk > d.silenceMs || err.code === grpc.status.FAILED_PRECONDITION) {
      lost = true;
      parentPort!.postMessage({ type: 'lost', reason: `no heartbeat got through for ${((Date.now() - lastOk) / 1000).toFixed(1)} s (${err.details ?? err.message})` });
    }
  });
}, d.intervalMs);
