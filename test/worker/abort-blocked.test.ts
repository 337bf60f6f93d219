import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { runJob } from '../../coordinator/job/run-job.js';
import { datasetRowSource } from '../../coordinator/data/dataset-source.js';
import { JobFailure } from '../../coordinator/job/control-server.js';
import { createLogger } from '../../shared/util/log.js';
import { STALL_GROUP_TIMEOUT_MS } from '../fixtures/stall-worker.js';

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'stall-worker.js');

/**
 * The coordinator's abort reaches a worker whose main thread is blocked in the in-tape all-gather
 * (Atomics.wait), which its command stream cannot: real worker processes, real gRPC, real ZeroMQ.
 * Rank 1 hangs inside the step (busy loop, then stopped like a hung host, its sockets open), so
 * rank 0's gather would wait out the group's timeout; the coordinator notices the silent rank 1
 * and aborts, and rank 0 must exit at once with the coordinator's reason.
 */
test('an abort from the coordinator stops a worker blocked in a collective with a stalled peer', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-abort-'));
  const dataDir = path.join(dir, 'data');
  mkdirSync(dataDir);
  const w = new DatasetWriter(dataDir, { height: 4, width: 4, labelSet: 'toy', labels: ['A', 'B'], rowsPerBatch: 8, batchesPerShard: 1 });
  for (let i = 0; i < 8; i++)
    await w.add('train', {
      image: new Uint8Array(16).fill(i),
      labels: [i % 2, 0],
      subjectId: `p${i}`,
      studyId: `s${i}`,
      path: `img/${i}.png`,
    });
  await w.finish({ createdBy: 'test', source: {} });
  const ds = await openDataset(dataDir);
  const procs: { proc: ChildProcess; stderr(): string; done: Promise<{ code: number | null; stderr: string; at: number }> }[] = [];
  const start = (control: string, token: string, rank: number) => {
    const proc = spawn(process.execPath, [fixture, '--coordinator', control, '--token', token, '--rank', String(rank), '--dir', dir], {
      env: { ...process.env, CXR_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    proc.stderr!.on('data', (d) => (stderr += d));
    const done = new Promise<{ code: number | null; stderr: string; at: number }>((resolve) =>
      proc.on('close', (code) => resolve({ code, stderr, at: Date.now() })),
    );
    void done.then((r) => (gone ??= r));
    procs.push({ proc, stderr: () => stderr, done });
  };
  let failed: unknown = null;
  let gone: { code: number | null; stderr: string } | null = null;
  const until = async (file: string) => {
    for (const t0 = Date.now(); !existsSync(path.join(dir, file)); ) {
      if (failed && !procs.length) throw failed;
      if (gone) assert.fail(`a worker exited (code ${gone.code}) before reaching its step:\n${gone.stderr}`);
      if (Date.now() - t0 > 60_000) assert.fail(`no ${file} within 60 s:\n${procs.map((p) => p.stderr()).join('\n')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  try {
    let stoppedAt = 0;
    const job = runJob({
      workers: 2,
      listen: '127.0.0.1:0',
      token: 'stall-test-token',
      dataPort: 0,
      step: { name: 'stall' },
      source: datasetRowSource(ds),
      seed: 1,
      globalBatch: 4,
      steps: 2,
      heartbeatIntervalMs: 200,
      // Generous: on a loaded 2-core machine a live rank can miss a short window and be named instead.
      heartbeatTimeoutMs: 5000,
      log: createLogger('test', 'silent'),
      onListening: ({ control, token }) => [0, 1].forEach((r) => start(control, token, r)),
    });
    job.catch((e: unknown) => (failed = e));
    await Promise.all([until('blocked-0'), until('stalled-1')]);
    // Rank 0 is in Atomics.wait now (the marker is written just before); rank 1 spins. Stop rank
    // 1 like a hung host: its heartbeats stop too, and the coordinator aborts the job.
    await new Promise((r) => setTimeout(r, 200));
    procs[1]!.proc.kill('SIGSTOP');
    stoppedAt = Date.now();
    await assert.rejects(job, (e: unknown) => e instanceof JobFailure && /worker rank 1 .* sent no heartbeat/.test(e.message));
    let timer: NodeJS.Timeout | undefined;
    const r0 = await Promise.race([
      procs[0]!.done,
      new Promise<never>(
        (_, reject) =>
          (timer = setTimeout(() => reject(new Error(`rank 0 still blocked 15 s after the abort:\n${procs[0]!.stderr()}`)), 15_000)),
      ),
    ]).finally(() => clearTimeout(timer));
    assert.equal(r0.code, 1, r0.stderr);
    assert.match(r0.stderr, /aborted by the coordinator: worker rank 1 .*sent no heartbeat/);
    // Well inside the group's own timeout: the abort, not the gather's timeout, ended the wait.
    const took = r0.at - stoppedAt;
    assert.ok(took < 30_000, `rank 0 exited ${took} ms after rank 1 stopped (group timeout ${STALL_GROUP_TIMEOUT_MS} ms)`);
    assert.doesNotMatch(r0.stderr, /internal error|gave no answer within/);
  } finally {
    for (const p of procs) {
      p.proc.kill('SIGKILL');
      await p.done;
    }
    await ds.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
