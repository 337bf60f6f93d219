import { parentPort, workerData } from 'node:worker_threads';
import { decodeBatch } from '../shared/dataset/wire.js';
import { augmentImages } from '../shared/augment/warp.js';
import type { AugmentThreadData, PrepareJob, PrepareResult } from './batch-augmenter.js';

/** Worker-thread body of BatchAugmenter: decode each slice and augment its images, in arrival order. */
const port = parentPort;
if (!port) throw new Error('augment-thread.js runs only as a worker thread (BatchAugmenter starts it)');
const { policy, seed } = workerData as AugmentThreadData;
port.on('message', (job: PrepareJob) => {
  let reply: PrepareResult;
  try {
    const b = decodeBatch(job.payload);
    if (b.height !== b.width) throw new Error(`augmentation needs square images, got ${b.height}x${b.width}`);
    const images = augmentImages(b.images, b.n, b.width, policy, seed, job.epoch, job.indices);
    // Labels are a view on the payload: copied so the reply does not carry the whole message.
    reply = { id: job.id, ok: true, batch: { ...b, images, labels: b.labels.slice() } };
    port.postMessage(reply, [images.buffer as ArrayBuffer, reply.batch!.labels.buffer as ArrayBuffer]);
  } catch (e) {
    reply = { id: job.id, ok: false, error: e instanceof Error ? e.message : String(e) };
    port.postMessage(reply);
  }
});
