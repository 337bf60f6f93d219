import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { checkpointsDir } from '../../shared/checkpoint/index.js';
import { createLogger } from '../../shared/util/log.js';
import { coordinatorEntry, workerEntry } from '../../shared/util/paths.js';
import { freePorts } from '../../shared/util/free-ports.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

// Faults in real processes against an undisturbed run of the same 24 steps (docs/reliability.md).
const STEPS = 24;
const COMMON = [
  '--workers',
  '2',
  '--steps',
  String(STEPS),
  '--model',
  'tiny',
  '--batch-size',
  '16',
  '--seed',
  '5',
  '--eval',
  'none',
  '--backend',
  'wasm',
  '--lr',
  '3e-3',
  '--warmup-steps',
  '2',
  '--no-report',
  '--params-check-every',
  '1',
];

const lines = async (out: string): Promise<{ step: number }[]> =>
  (await readFile(path.join(out, 'metrics.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

/** The coordinator CLI, its worker pids (from their log lines) and its output. */
function coordinator(args: string[]) {
  const proc = spawn(process.execPath, [coordinatorEntry, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const pids = new Set<number>();
  const out = { stdout: '', stderr: '' };
  proc.stdout.on('data', (b: Buffer) => (out.stdout += b.toString()));
  let partial = '';
  proc.stderr.on('data', (b: Buffer) => {
    out.stderr += b.toString();
    // Whole lines only: a chunk may end inside a pid.
    const text = partial + b.toString();
    const cut = text.lastIndexOf('\n') + 1;
    partial = text.slice(cut);
    for (const m of text.slice(0, cut).matchAll(/^\[worker \d+\] .*"pid":(\d+)/gm)) pids.add(Number(m[1]));
  });
  const code = new Promise<number | null>((r) => proc.once('close', (c) => r(c)));
  return { proc, pids, out, code };
}

/** Resolves once metrics.jsonl has `n` lines (fails if the process ends first). */
function atStep(out: string, n: number, proc: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const onExit = () => reject(new Error(`the run ended before step ${n}`));
    proc.once('exit', onExit);
    const poll = setInterval(async () => {
      const text = await readFile(path.join(out, 'metrics.jsonl'), 'utf8').catch(() => '');
      if (text.split('\n').filter((l) => l.trim()).length >= n) {
        clearInterval(poll);
        proc.off('exit', onExit);
        resolve();
      }
    }, 5);
  });
}

const killAll = (pids: Iterable<number>) => {
  for (const pid of pids)
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
};

let dir: string;
let data: string;
let base: TrainArgs;
/** model.bin of the undisturbed 24-step run. */
let want: Buffer;
const pids = new Set<number>();
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cxr-faults-'));
  data = path.join(dir, 'data');
  await runSynth(data, false, { count: 100, imageSize: 32, seed: 3, fractions: { val: 0.1, test: 0.2 } });
  const straight = path.join(dir, 'straight');
  base = {
    ...SMALL_RUN_FLAGS,
    workers: 2,
    data,
    out: straight,
    steps: STEPS,
    'batch-size': 16,
    seed: 5,
    eval: 'none',
    backend: 'wasm',
    lr: 3e-3,
    'warmup-steps': 2,
    uncertainty: 'ignore',
    'pos-weight': 'none',
  } as unknown as TrainArgs;
  await trainDistributed(parseTrainConfig(base), { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} });
  want = await readFile(path.join(straight, 'model.bin'));
});
after(async () => {
  killAll(pids);
  await rm(dir, { recursive: true, force: true });
});

test('faults: a worker killed at step >= 10 is replaced in place; SIGTERM at step >= 12 saves there and resumes; both give the undisturbed weights', async () => {
  // kill -9 of one worker at step >= 10: the coordinator restarts both from step 8 and finishes.
  const killed = path.join(dir, 'killed');
  const a = coordinator([...COMMON, '--data', data, '--out', killed, '--checkpoint-every', '4']);
  await atStep(killed, 10, a.proc);
  for (const p of a.pids) pids.add(p);
  const victim = [...a.pids][0]!;
  process.kill(victim, 'SIGKILL');
  const codeA = await a.code;
  for (const p of a.pids) pids.add(p);
  assert.equal(codeA, 0, a.out.stderr.slice(-3000));
  assert.match(
    a.out.stderr,
    /restart 1 of at most 3: worker \d \(rank \d, pid \d+\) was killed by SIGKILL|restart 1 of at most 3: worker rank \d/,
  );
  assert.match(a.out.stdout, /1 restart after lost workers/);
  assert.deepEqual(await readFile(path.join(killed, 'model.bin')), want, 'bit-identical weights after the restart');
  assert.deepEqual(
    (await lines(killed)).map((l) => l.step),
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'every step once in metrics.jsonl',
  );
  const restarts = JSON.parse(await readFile(path.join(killed, 'restarts.json'), 'utf8'));
  assert.equal(restarts.length, 1);
  assert.ok(restarts[0].resumedAt >= 8 && restarts[0].resumedAt % 4 === 0, JSON.stringify(restarts[0]));

  // SIGTERM at step >= 12, no periodic checkpoints: a checkpoint at the stop step, exit 143, and the
  // printed resume command finishes the run with the same weights.
  const termed = path.join(dir, 'termed');
  const b = coordinator([...COMMON, '--data', data, '--out', termed, '--checkpoint-every', '0', '--checkpoint-every-minutes', '0']);
  await atStep(termed, 12, b.proc);
  b.proc.kill('SIGTERM');
  const codeB = await b.code;
  for (const p of b.pids) pids.add(p);
  assert.equal(codeB, 143, b.out.stderr.slice(-3000));
  const m = /stopped by SIGTERM after step (\d+) of the run; checkpoint: (\S+)\nresume with: (.*)\n/.exec(b.out.stdout);
  assert.ok(m, b.out.stdout);
  const at = Number(m[1]);
  assert.ok(at >= 12 && at < STEPS, `stopped at ${at}`);
  const committed = (await readdir(checkpointsDir(termed))).filter((d) =>
    existsSync(path.join(checkpointsDir(termed), d, 'manifest.json')),
  );
  assert.deepEqual(committed, [`step-${String(at).padStart(7, '0')}`]);
  assert.ok(!existsSync(path.join(termed, 'model.bin')), 'an interrupted run exports no final weights');
  const argv = m[3]!.split(' ').slice(1);
  assert.deepEqual(argv.slice(-2), ['--resume', termed]);
  const c = coordinator(argv);
  const codeC = await c.code;
  for (const p of c.pids) pids.add(p);
  assert.equal(codeC, 0, c.out.stderr.slice(-3000));
  assert.match(c.out.stdout, new RegExp(`resumed at step ${at}`));
  assert.deepEqual(await readFile(path.join(termed, 'model.bin')), want, 'bit-identical weights after stop + resume');
  assert.deepEqual(
    (await lines(termed)).map((l) => l.step),
    Array.from({ length: STEPS }, (_, i) => i + 1),
  );
});

test('faults with --listen: a remote worker killed at step >= 10 rejoins (as a restarted pod would) and the run ends with the undisturbed weights', async () => {
  const [port, dataPort] = await freePorts(2);
  const address = `127.0.0.1:${port}`;
  const out = path.join(dir, 'listen');
  let finished = false;
  const current: (ChildProcess | undefined)[] = [];
  // A Kubernetes Indexed Job in miniature: a worker that exits non-zero is started again with its rank.
  const start = (rank: number) => {
    const p = spawn(process.execPath, [workerEntry, '--coordinator', address, '--rank', String(rank), '--connect-timeout', '120'], {
      env: { ...process.env, CXR_JOB_TOKEN: 'listen-token' },
      stdio: 'ignore',
    });
    pids.add(p.pid!);
    current[rank] = p;
    p.once('exit', (code) => {
      if (!finished && code !== 0) setTimeout(() => start(rank), 200);
    });
  };
  start(0);
  start(1);
  const run = trainDistributed(parseTrainConfig({ ...base, out, 'checkpoint-every': 4 } as TrainArgs), {
    log: createLogger('test', 'warn'),
    progress: false,
    listen: address,
    dataPort,
    token: 'listen-token',
    maxRestarts: 3,
    rejoinTimeoutMs: 120_000,
    checkpoints: { checkpointEvery: 4 },
  });
  const proc = { once: () => {}, off: () => {} } as unknown as ChildProcess;
  await atStep(out, 10, proc);
  current[1]!.kill('SIGKILL');
  const r = await run;
  finished = true;
  assert.equal(r.restarts, 1);
  assert.deepEqual(await readFile(path.join(out, 'model.bin')), want, 'bit-identical weights after the rejoin');
  assert.deepEqual(
    (await lines(out)).map((l) => l.step),
    Array.from({ length: STEPS }, (_, i) => i + 1),
  );
});
