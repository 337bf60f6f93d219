import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed, type TrainJobOptions } from '../../coordinator/train/train-job.js';
import { checkpointsDir, stepDir } from '../../shared/checkpoint/index.js';
import { writeSafetensors } from '../../shared/interop/safetensors.js';
import { openStateDict } from '../../shared/interop/state-dict.js';
import { createLogger } from '../../shared/util/log.js';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const run = promisify(execFile);
const log = createLogger('test', 'warn');
const quiet = () => {};
const COMMON = [
  '--model',
  'tiny',
  '--uncertainty',
  'lsr-ones',
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

function args(data: string, out: string, workers: number, steps: number): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers,
    data,
    out,
    steps,
    'batch-size': 16,
    seed: 5,
    eval: 'none',
    backend: 'wasm',
    lr: 3e-3,
    'warmup-steps': 2,
    uncertainty: 'lsr-ones',
    'pos-weight': 'none',
    gpu: false,
    prefetch: 2,
    'params-check-every': 1,
    report: false,
    'checkpoint-every': 0,
    'checkpoint-every-minutes': 0,
    'keep-checkpoints': 3,
  } as TrainArgs;
}
const opts = (checkpoints: TrainJobOptions['checkpoints']): TrainJobOptions => ({ log, progress: false, workerOutput: quiet, checkpoints });
const lines = async (out: string) =>
  (await readFile(path.join(out, 'metrics.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

test('resume: 20 steps straight = 10 + resume to 20 bit for bit (same world); 2 -> 4 workers continues from the same sample position; --init-weights', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-resume-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 100, imageSize: 16, seed: 3, fractions: { val: 0.1, test: 0.2 } });
    const straight = path.join(dir, 'straight');
    const s = await trainDistributed(parseTrainConfig(args(data, straight, 2, 20)), opts({ checkpointEvery: 10, keepCheckpoints: 5 }));
    assert.equal(s.checkpoint, stepDir(checkpointsDir(straight), 20));
    assert.deepEqual((await readdir(checkpointsDir(straight))).sort(), ['step-0000010', 'step-0000020']);
    const at10 = stepDir(checkpointsDir(straight), 10);

    const same = path.join(dir, 'same');
    const r = await trainDistributed(parseTrainConfig(args(data, same, 2, 20)), opts({ resume: at10 }));
    assert.equal(r.startStep, 10);
    assert.equal(r.steps, 10);
    assert.equal(r.paramsHash, s.paramsHash, 'bit-identical parameters after the resumed run');
    assert.deepEqual(await readFile(path.join(same, 'model.bin')), await readFile(path.join(straight, 'model.bin')));

    const wider = path.join(dir, 'wider');
    const w = await trainDistributed(parseTrainConfig(args(data, wider, 4, 20)), opts({ resume: at10 }));
    assert.equal(w.startStep, 10);
    const a = await lines(straight);
    const b = await lines(wider);
    assert.deepEqual(
      b.map((l) => l.step),
      Array.from({ length: 10 }, (_, i) => 11 + i),
    );
    // Same parameters at the resume point and the same samples: step 11's loss agrees to rounding.
    assert.equal(b[0].epoch, a[10].epoch);
    assert.ok(Math.abs(b[0].loss - a[10].loss) <= 1e-5 * Math.abs(a[10].loss), `step 11 loss ${b[0].loss} vs ${a[10].loss}`);

    await assert.rejects(trainDistributed(parseTrainConfig(args(data, same, 2, 20)), opts({ resume: 'auto' })), /nothing left of 20 steps/);

    // --init-weights: the exported safetensors of the final checkpoint, trained one step with lr 0, gives its parameters back.
    const st = path.join(dir, 'final.safetensors');
    await run(process.execPath, [coordinatorEntry, 'export', '--checkpoint', straight, '--out', st]);
    const init = path.join(dir, 'init');
    await trainDistributed(parseTrainConfig({ ...args(data, init, 2, 1), lr: 0 }), opts({ initWeights: st }));
    assert.deepEqual(await readFile(path.join(init, 'model.bin')), await readFile(path.join(straight, 'model.bin')));

    // --init-weights without the tensors of a frozen tower: refused, since they would stay random for the whole run.
    const sd = await openStateDict(st);
    const headOnly = path.join(dir, 'head-only.safetensors');
    try {
      const kept = [...sd.tensors.entries()].filter(([name]) => !name.startsWith('visual.'));
      await writeSafetensors(
        headOnly,
        await Promise.all(kept.map(async ([name, t]) => ({ name, shape: t.shape, data: await sd.readF32(name) }))),
      );
    } finally {
      await sd.close();
    }
    await assert.rejects(
      trainDistributed(
        parseTrainConfig({ ...args(data, path.join(dir, 'frozen-init'), 2, 1), freeze: ['visual'] }),
        opts({ initWeights: headOnly }),
      ),
      /head-only\.safetensors: no tensor for \d+ frozen parameters \(visual\..*which would stay at their random start/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a coordinator killed during a run (checkpoint saves in flight) resumes with --resume auto to the uninterrupted result', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-kill-'));
  const pids = new Set<number>();
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 100, imageSize: 16, seed: 4, fractions: { val: 0.1, test: 0.2 } });
    const straight = path.join(dir, 'straight');
    await trainDistributed(parseTrainConfig({ ...args(data, straight, 2, 24), seed: 5 }), opts({ checkpointEvery: 2 }));
    const out = path.join(dir, 'run');
    const cli = (extra: string[]) =>
      spawn(
        process.execPath,
        [coordinatorEntry, '--workers', '2', '--data', data, '--out', out, '--steps', '24', '--checkpoint-every', '2', ...COMMON, ...extra],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
    const first = cli([]);
    first.stderr.on('data', (b: Buffer) => {
      for (const m of b.toString().matchAll(/^\[worker \d+\] .*"pid":(\d+)/gm)) pids.add(Number(m[1]));
    });
    // Kill once a checkpoint is committed and the next save is seen in progress (a step directory
    // without its manifest), or at the latest once three checkpoints are committed.
    const root = checkpointsDir(out);
    const killedMidSave = await new Promise<boolean>((resolve, reject) => {
      first.on('exit', () => reject(new Error('the run finished before it could be killed')));
      const poll = setInterval(async () => {
        const dirs = await readdir(root).catch(() => [] as string[]);
        const open = dirs.some((d) => !existsSync(path.join(root, d, 'manifest.json')));
        const committed = dirs.filter((d) => existsSync(path.join(root, d, 'manifest.json'))).length;
        if ((open && committed >= 1) || committed >= 3) {
          clearInterval(poll);
          first.kill('SIGKILL');
          resolve(open && committed < 3);
        }
      }, 2);
    });
    await new Promise((r) => first.once('close', r));
    const again = cli(['--resume', 'auto']);
    let stdout = '';
    again.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    const code = await new Promise((r) => again.once('close', r));
    assert.equal(code, 0);
    assert.match(stdout, /resumed at step \d+/);
    assert.deepEqual(
      await readFile(path.join(out, 'model.bin')),
      await readFile(path.join(straight, 'model.bin')),
      `killed ${killedMidSave ? 'mid-save' : 'between saves'}`,
    );
    const steps = (await lines(out)).map((l) => l.step);
    assert.deepEqual(
      steps,
      Array.from({ length: 24 }, (_, i) => i + 1),
      'every step once in metrics.jsonl',
    );
  } finally {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await rm(dir, { recursive: true, force: true });
  }
});
