import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { runJob } from '../../coordinator/job/run-job.js';
import { datasetRowSource } from '../../coordinator/data/dataset-source.js';
import { JobFailure, type StepSummary } from '../../coordinator/job/control-server.js';
import type { WorkerInfo } from '../../coordinator/job/control-server.js';
import { coordinatorEntry, workerEntry } from '../../shared/util/paths.js';
import { createLogger } from '../../shared/util/log.js';
import { freePorts } from '../../shared/util/free-ports.js';

/**
 * The whole path on real processes, real gRPC and real ZeroMQ: `coordinator probe` launches or
 * awaits `worker` processes that run the checksum step over a small dataset, and the coordinator
 * checks their sums against the dataset.
 */

const H = 8;
const W = 8;
const LABELS = ['A', 'B', 'C'];
let dir: string;
let dataDir: string;
const log = createLogger('test', 'silent');

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'cxr-job-'));
  dataDir = path.join(dir, 'data');
  const { mkdirSync } = await import('node:fs');
  mkdirSync(dataDir);
  const w = new DatasetWriter(dataDir, { height: H, width: W, labelSet: 'toy', labels: LABELS, rowsPerBatch: 16, batchesPerShard: 2 });
  for (let i = 0; i < 72; i++) {
    const image = new Uint8Array(H * W);
    for (let p = 0; p < image.length; p++) image[p] = (i * 31 + p * 7) & 255;
    await w.add(i < 64 ? 'train' : 'val', {
      image,
      labels: [i % 2, i % 3 === 0 ? 1 : 0, i % 5 === 0 ? -1 : NaN],
      subjectId: `p${i}`,
      studyId: `s${i}`,
      path: `img/${i}.png`,
    });
  }
  await w.finish({ createdBy: 'test', source: {} });
});

after(() => rmSync(dir, { recursive: true, force: true }));

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(entry: string, args: string[], env: NodeJS.ProcessEnv = {}): { proc: ChildProcess; done: Promise<Run> } {
  const proc = spawn(process.execPath, [entry, ...args], {
    env: { ...process.env, CXR_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<Run>((resolve) => proc.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { proc, done };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('coordinator probe --workers 2: launch, rendezvous, data feed, step reports, hash checks, shutdown; every byte verified', async () => {
  const r = await run(coordinatorEntry, [
    'probe',
    '--data',
    dataDir,
    '--workers',
    '2',
    '--batch',
    '4',
    '--steps',
    '12',
    '--params-check-every',
    '5',
    '--seed',
    '9',
  ]).done;
  assert.equal(r.code, 0, r.stderr);
  const summary = JSON.parse(r.stdout.trim());
  assert.equal(summary.ok, true);
  assert.equal(summary.workers, 2);
  assert.equal(summary.steps, 12, '12 steps across an epoch boundary (8 per epoch)');
  assert.equal(summary.images, 96);
  assert.match(summary.lastParamsHash, /^[0-9a-f]{64}$/);
  assert.match(r.stderr, /\[worker 0\] /, 'worker output is captured and prefixed');
  assert.match(r.stderr, /\[worker 1\] /);
  assert.match(r.stderr, /all 2 ranks hold identical parameters/);
});

test('coordinator --listen: workers started first retry until it answers; a worker with a wrong token is refused and the job goes on', async () => {
  const [port] = await freePorts(1);
  const address = `127.0.0.1:${port}`;
  const workers = [0, 1].map(() =>
    run(workerEntry, ['--coordinator', address, '--connect-timeout', '30'], { CXR_JOB_TOKEN: 'right-token' }),
  );
  await new Promise((r) => setTimeout(r, 1500));
  const coord = run(coordinatorEntry, [
    'probe',
    '--data',
    dataDir,
    '--listen',
    address,
    '--data-port',
    '0',
    '--workers',
    '2',
    '--batch',
    '3',
    '--steps',
    '5',
    '--token',
    'right-token',
  ]);
  // An intruder with the wrong token, while the coordinator waits for its two workers.
  const intruder = await run(workerEntry, ['--coordinator', address, '--token', 'wrong-token', '--connect-timeout', '30']).done;
  assert.equal(intruder.code, 2);
  assert.match(intruder.stderr, /refused this worker: job token refused/);
  const r = await coord.done;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout.trim()).steps, 5);
  assert.match(r.stderr, /refused a worker .*wrong job token/);
  for (const w of workers) assert.equal((await w.done).code, 0);
});

test('a third worker joining a full job and a worker asking for a taken rank are refused in one line each, and the coordinator logs them', async () => {
  const [port] = await freePorts(1);
  const address = `127.0.0.1:${port}`;
  const coord = run(coordinatorEntry, [
    'probe',
    '--data',
    dataDir,
    '--listen',
    address,
    '--data-port',
    '0',
    '--workers',
    '2',
    '--batch',
    '2',
    '--steps',
    '100000',
    '--step-option',
    'delayMs=100',
    '--token',
    'tok',
  ]);
  let err = '';
  coord.proc.stderr!.on('data', (d) => (err += d));
  const workers = [0, 1].map((r) =>
    run(workerEntry, ['--coordinator', address, '--rank', String(r), '--connect-timeout', '30'], { CXR_JOB_TOKEN: 'tok' }),
  );
  while (!/rendezvous complete/.test(err)) await new Promise((r) => setTimeout(r, 20));
  const third = await run(workerEntry, ['--coordinator', address, '--connect-timeout', '30'], { CXR_JOB_TOKEN: 'tok' }).done;
  const taken = await run(workerEntry, ['--coordinator', address, '--rank', '1', '--connect-timeout', '30'], { CXR_JOB_TOKEN: 'tok' }).done;
  for (const [w, why] of [
    [
      third,
      /^worker: error: coordinator at 127\.0\.0\.1:\d+ refused this worker: all 2 ranks are taken; this job wants exactly 2 workers$/m,
    ],
    [taken, /^worker: error: coordinator at 127\.0\.0\.1:\d+ refused this worker: rank 1 is already taken by rank 1 \(host .*\)$/m],
  ] as const) {
    assert.equal(w.code, 1, w.stderr);
    assert.match(w.stderr, why);
    assert.doesNotMatch(w.stderr, /internal error|\n\s+at /);
  }
  assert.match(err, /refused a worker \(host .*, pid \d+\): all 2 ranks are taken/);
  assert.match(err, /refused a worker \(host .*, pid \d+\): rank 1 is already taken/);
  // The job went on with its two workers all along; stop it.
  assert.doesNotMatch(err, /"level":50/);
  coord.proc.kill('SIGTERM');
  assert.equal((await coord.done).code, 143);
  await Promise.all(workers.map((w) => w.done));
});

test('a worker that dies during start-up fails the job: non-zero, its error output shown, the other worker stopped', async () => {
  const ds = await openDataset(dataDir);
  let pids: number[] = [];
  let launched: readonly number[] = [];
  const lines: string[] = [];
  try {
    await assert.rejects(
      runJob({
        workers: 2,
        step: { name: 'checksum' },
        source: datasetRowSource(ds),
        seed: 1,
        globalBatch: 4,
        steps: 4,
        log,
        workerOutput: (l) => lines.push(l),
        // Worker 1's Node cannot even load its preload module: it dies before registering.
        perWorker: (i) => (i === 1 ? { env: { NODE_OPTIONS: '--require=/nonexistent/preload.cjs' } } : {}),
        onLaunched: (p) => (launched = p),
      }).catch((e) => {
        pids = [...String(e.message).matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
        throw e;
      }),
      (e: unknown) =>
        e instanceof JobFailure &&
        e.exitCode === 1 &&
        /^worker 1 \(pid \d+\) exited with code 1 during start-up; its last output:/.test(e.message) &&
        /\| .*Cannot find module '\/nonexistent\/preload.cjs'/.test(e.message),
    );
    assert.ok(lines.some((l) => l.startsWith('[worker 1] ') && l.includes('preload.cjs')));
  } finally {
    await ds.close();
  }
  assert.deepEqual(pids, [launched[1]]);
  assert.ok(!alive(launched[0]!), 'worker 0, waiting in the rendezvous, was stopped');
});

async function failingJob(opts: {
  stepOptions?: Record<string, number>;
  heartbeatTimeoutMs?: number;
  onStep?: (s: StepSummary, w: readonly WorkerInfo[]) => void;
}): Promise<{ error: JobFailure; workers: readonly WorkerInfo[] }> {
  const ds = await openDataset(dataDir);
  let workers: readonly WorkerInfo[] = [];
  try {
    await runJob({
      workers: 2,
      step: { name: 'checksum', options: opts.stepOptions ?? {} },
      source: datasetRowSource(ds),
      seed: 1,
      globalBatch: 4,
      steps: 400,
      paramsCheckEvery: 1,
      heartbeatIntervalMs: 100,
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? 10_000,
      log,
      workerOutput: () => {},
      onRendezvous: (w) => (workers = w),
      onStep: (s) => opts.onStep?.(s, workers),
    });
  } catch (e) {
    assert.ok(e instanceof JobFailure, String(e));
    return { error: e, workers };
  } finally {
    await ds.close();
  }
  throw new Error('the job should have failed');
}

test('a worker hung mid-run (SIGSTOP) is named after the heartbeat timeout; one killed (SIGKILL) is named at once; both jobs stop every worker', async () => {
  let stoppedAt = 0;
  const hung = await failingJob({
    heartbeatTimeoutMs: 1500,
    stepOptions: { delayMs: 20 },
    onStep: (s, w) => {
      if (s.step === 3 && !stoppedAt) {
        stoppedAt = Date.now();
        process.kill(w[1]!.pid, 'SIGSTOP');
      }
    },
  });
  const waited = Date.now() - stoppedAt;
  const w1 = hung.workers[1]!;
  assert.match(
    hung.error.message,
    new RegExp(`worker rank 1 \\(host .*, pid ${w1.pid}, device \\d\\) sent no heartbeat for \\d+\\.\\d s \\(timeout 1\\.5 s`),
  );
  // Not before the timeout; the upper bound only tells detection from a hang (a loaded machine is slow to notice).
  assert.ok(waited >= 1400 && waited < 30_000, `detected after ${waited} ms`);
  for (const w of hung.workers) assert.ok(!alive(w.pid), `worker pid ${w.pid} was stopped`);

  let killed = false;
  const dead = await failingJob({
    stepOptions: { delayMs: 20 },
    onStep: (s, w) => {
      if (s.step === 3 && !killed) {
        killed = true;
        process.kill(w[0]!.pid, 'SIGKILL');
      }
    },
  });
  const w0 = dead.workers[0]!;
  assert.match(
    dead.error.message,
    new RegExp(
      `(rank 0 \\(host .*, pid ${w0.pid}.*disconnected from the control plane)|(worker \\d \\(rank 0, pid ${w0.pid}\\) was killed by SIGKILL during the run)`,
    ),
  );
  for (const w of dead.workers) assert.ok(!alive(w.pid));
});

test('failures inside workers reach the coordinator by name: a step error, a start-up error after registering, diverged replicas', async () => {
  const stepErr = await failingJob({ stepOptions: { failRank: 1, failAtStep: 2 } });
  assert.match(stepErr.error.message, /worker rank 1 \(host .*\) failed: checksum step: injected failure on rank 1 at step 2/);
  const initErr = await failingJob({ stepOptions: { failRank: 0, failAtStep: -1 } });
  assert.match(initErr.error.message, /worker rank 0 \(host .*\) failed: checksum step: injected start-up failure on rank 0/);
  const diverged = await failingJob({ stepOptions: { divergeRank: 1, divergeAtStep: 4 } });
  assert.match(
    diverged.error.message,
    /parameter hashes differ at step 4, so the replicas have diverged \(rank 0: [0-9a-f]{16}\.\.\.; rank 1: [0-9a-f]{16}\.\.\.\)/,
  );
  const atStart = await failingJob({ stepOptions: { divergeRank: 0, divergeAtStep: -1 } });
  assert.match(atStart.error.message, /parameter hashes differ at step 0/);
});

test('heartbeats keep flowing while a step holds the worker main thread for longer than the heartbeat timeout', async () => {
  const ds = await openDataset(dataDir);
  try {
    const r = await runJob({
      workers: 2,
      step: { name: 'checksum', options: { spinMs: 6000 } },
      source: datasetRowSource(ds),
      seed: 2,
      globalBatch: 4,
      steps: 1,
      heartbeatIntervalMs: 100,
      // Long enough that a heartbeat thread starved by a loaded machine still makes it; the step holds twice that.
      heartbeatTimeoutMs: 3000,
      log,
      workerOutput: () => {},
    });
    assert.equal(r.stepsRun, 1);
    assert.ok(r.lastStep!.timings.compute >= 6, 'the step held the main thread for twice the heartbeat timeout');
  } finally {
    await ds.close();
  }
});

test('credit flow across processes: a slow worker finds its prefetch queue full every step and the feed is never further ahead', async () => {
  const ds = await openDataset(dataDir);
  const reports: StepSummary[] = [];
  try {
    const r = await runJob({
      workers: 2,
      step: { name: 'checksum', options: { delayMs: 80 } },
      source: datasetRowSource(ds),
      seed: 2,
      globalBatch: 4,
      steps: 14,
      prefetch: 3,
      log,
      workerOutput: () => {},
      onStep: (s) => reports.push(s),
    });
    // The hard bound, whatever the timing: never more than prefetch batches sent ahead of the step loop.
    assert.deepEqual(
      r.feed.map((f) => f.maxAhead),
      [3, 3],
    );
    const queue = reports.map((s) => s.reports.map((x) => x.counters.data_queue!));
    assert.ok(
      queue.flat().every((q) => q >= 1 && q <= 3),
      JSON.stringify(queue),
    );
    // A step much slower than reading a slice finds the prefetch queue full, so it does not wait
    // for data. (Most, not all, takes: the machine is shared and a stall elsewhere can delay a read.)
    const steady = queue.slice(4, -3).flat();
    assert.ok(steady.filter((q) => q === 3).length >= steady.length * 0.75, JSON.stringify(queue));
    assert.deepEqual(
      reports.map((s) => s.step),
      Array.from({ length: 14 }, (_, i) => i),
    );
    assert.equal(
      reports.reduce((a, s) => a + s.counters.rows!, 0),
      14 * 4,
    );
  } finally {
    await ds.close();
  }
});

test('a worker whose starting coordinator is gone stops retrying its registration at once (a coordinator killed mid-rendezvous)', async () => {
  // The worker's parent here is the test process, not pid 1: to the worker, the coordinator that
  // started it is gone. Nothing listens on the port, so its first attempt fails as after a kill.
  const [port] = await freePorts(1, '127.0.0.1');
  const t0 = Date.now();
  const r = await run(workerEntry, ['--coordinator', `127.0.0.1:${port}`, '--connect-timeout', '300'], {
    CXR_JOB_TOKEN: 't',
    CXR_COORDINATOR_PID: '1',
  }).done;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /the coordinator that started this worker \(pid 1\) is gone: registration failed .* and is not retried/);
  // Without the check it would retry for the whole --connect-timeout (300 s).
  assert.ok(Date.now() - t0 < 30_000, `took ${Date.now() - t0} ms`);
});

test('SIGTERM to the coordinator stops every worker and exits 143; a coordinator killed outright leaves no orphans', async () => {
  const start = async () => {
    const c = run(coordinatorEntry, [
      'probe',
      '--data',
      dataDir,
      '--workers',
      '2',
      '--batch',
      '2',
      '--steps',
      '200',
      '--step-option',
      'delayMs=100',
    ]);
    let err = '';
    c.proc.stderr!.on('data', (d) => (err += d));
    const end = Date.now() + 20_000;
    while (!/rendezvous complete/.test(err)) {
      if (Date.now() > end) throw new Error(`no rendezvous: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const pids = /started 2 worker processes \(pids (\d+), (\d+)\)/.exec(err)!.slice(1).map(Number);
    return { ...c, pids };
  };
  const waitGone = async (pids: number[], ms: number) => {
    const end = Date.now() + ms;
    while (pids.some(alive) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return pids.filter(alive);
  };

  const a = await start();
  a.proc.kill('SIGTERM');
  const r = await a.done;
  assert.equal(r.code, 143, r.stderr);
  assert.match(r.stderr, /coordinator: error: interrupted by SIGTERM; stopping the workers/);
  assert.deepEqual(a.pids.filter(alive), [], 'the coordinator waited for its workers to be gone');

  const b = await start();
  b.proc.kill('SIGKILL');
  await b.done;
  // Workers live in their own process groups, so nothing killed them: they must notice the lost coordinator.
  assert.deepEqual(await waitGone(b.pids, 10_000), [], 'workers of a dead coordinator exit by themselves');
});
