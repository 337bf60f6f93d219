import { parentPort } from 'node:worker_threads';
import { writeShard, type ShardData } from './shard-writer.js';

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
    try {
      const result = await writeShard(job.stepDir, job.data);
      port.postMessage({ id: job.id, ok: true, result });
    } catch (e) {
      port.postMessage({ id: job.id, ok: false, error: e instanceof Error ? e.message : String(e) });
    }
  });
});
