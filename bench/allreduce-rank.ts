/**
 * One rank of `npm run bench -- allreduce`, run as a child process. Does what the gloo reference
 * run beside it does: a buffer of ones, two warm-up all-reduces, a barrier, then `iters` timed
 * all-reduces; rank 0 prints one JSON line per size with the median time.
 */
import { ProcessGroup } from '../worker/collectives/index.js';
import type { Wire } from '../worker/collectives/index.js';

export interface BenchRankJob {
  rank: number;
  world: number;
  endpoints: string[];
  chunkBytes: number;
  ioThreads?: number;
  socketBufferBytes?: number;
  sharedMemory: boolean;
  shmChunkBytes?: number;
  wire: Wire;
  cases: { bytes: number; iters: number }[];
}

// The bench dispatcher may import this module by name; it only acts when given a job.
if (process.argv[2]) await main(JSON.parse(process.argv[2]) as BenchRankJob);

async function main(job: BenchRankJob): Promise<void> {
  const pg = await ProcessGroup.create({
    rank: job.rank,
    world: job.world,
    endpoints: job.endpoints,
    chunkBytes: job.chunkBytes,
    timeoutMs: 60_000,
    ...(job.ioThreads ? { ioThreads: job.ioThreads } : {}),
    ...(job.socketBufferBytes !== undefined ? { socketBufferBytes: job.socketBufferBytes } : {}),
    sharedMemory: job.sharedMemory,
    ...(job.shmChunkBytes ? { shmChunkBytes: job.shmChunkBytes } : {}),
  });
  if (job.rank === 0) process.stdout.write(JSON.stringify({ dataPath: pg.dataPath }) + '\n');
  for (const c of job.cases) {
    const buf = new Float32Array(c.bytes / 4).fill(1);
    for (let i = 0; i < 2; i++) await pg.allReduce(buf, { wire: job.wire });
    await pg.barrier();
    const times: number[] = [];
    for (let i = 0; i < c.iters; i++) {
      const t0 = process.hrtime.bigint();
      await pg.allReduce(buf, { wire: job.wire });
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    buf.fill(1);
    await pg.allReduce(buf, { wire: job.wire });
    if (buf[0] !== job.world || buf[buf.length - 1] !== job.world)
      throw new Error(`rank ${job.rank}: all-reduce of ones gave ${buf[0]}, expected ${job.world}`);
    times.sort((a, b) => a - b);
    if (job.rank === 0) process.stdout.write(JSON.stringify({ bytes: c.bytes, median_s: times[Math.floor(times.length / 2)]! }) + '\n');
  }
  await pg.close();
}
