import { parentPort } from 'node:worker_threads';
import { writeShard, type ShardData } from './shard-writer.js';
import { isUserError } from '../util/errors.js';

/** Worker-thread body of CheckpointWriter: one save at a time, in the order they arrive. */
interface Job {
  id: number;
  stepDir: string;
  data: ShardData;
}

const port = parentPort;
if (!port) throw new Error('writer-thread.js runs only as a worker thread (CheckpointWriter starts it)');
let chain: Promise<void> = Promise.resolve();
port.on('message', (job: Job) => {
  chain = chain.then(async () => {
    // The staging buffers go back to the caller's pool either way, so the next save copies into warm pages.
    const d = job.data;
    const buffers = [...new Set([d.params.buffer, d.m.buffer, d.v.buffer, ...(d.extra ? [d.extra.buffer] : [])])] as ArrayBuffer[];
    try {
      const result = await writeShard(job.stepDir, d);
      port.postMessage({ id: job.id, ok: true, result, buffers }, buffers);
    } catch (e) {
      port.postMessage(
        { id: job.id, ok: false, error: e instanceof Error ? e.message : String(e), user: isUserError(e), buffers },
        buffers,
      );
    }
  });
});
