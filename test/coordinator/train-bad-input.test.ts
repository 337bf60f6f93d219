import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import { coordinatorEntry } from '../../shared/util/paths.js';

// Bad input and a full disk, through the real CLI: one line naming the file or flag, no stack trace.
let dir: string;
let data: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cxr-bad-input-'));
  data = path.join(dir, 'data');
  await runSynth(data, false, { count: 60, imageSize: 32, seed: 1, fractions: { val: 0.1, test: 0.2 } });
});
after(() => rm(dir, { recursive: true, force: true }));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}
const cli = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> =>
  new Promise((resolve) =>
    execFile(
      process.execPath,
      [coordinatorEntry, ...args],
      { env: { ...process.env, CXR_LOG_LEVEL: 'warn', ...env } },
      (e, stdout, stderr) => resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
const TRAIN = ['--model', 'tiny', '--batch-size', '8', '--eval', 'none', '--backend', 'wasm', '--no-report', '--workers', '2'];

/** `args` without `flag` and its value. */
const without = (args: readonly string[], flag: string) => args.filter((a, i) => a !== flag && args[i - 1] !== flag);

/** One `coordinator: error: ...` line and nothing like a stack trace. */
function oneLine(r: Run, want: RegExp, code = 2): void {
  assert.equal(r.code, code, r.stderr);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('coordinator: '));
  assert.equal(errors.length, 1, r.stderr);
  assert.match(errors[0]!, want);
  assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
}

test('bad CLI values and a file as --out are one line each', async () => {
  const file = path.join(dir, 'a-file');
  await writeFile(file, 'x');
  oneLine(await cli([...TRAIN, '--data', data, '--out', file, '--steps', '2']), /--out .*a-file is a file, not a run directory/);
  for (const [flag, value, want] of [
    ['--max-restarts', '-1', /--max-restarts must be a whole number >= 0, got -1/],
    ['--rejoin-timeout', '0', /--rejoin-timeout must be a number of seconds > 0, got 0/],
    ['--checkpoint-every', '1.5', /--checkpoint-every must be a whole number >= 0, got 1.5/],
    ['--checkpoint-every-minutes', '-2', /--checkpoint-every-minutes must be >= 0, got -2/],
    ['--keep-checkpoints', '0', /--keep-checkpoints must be a whole number >= 1, got 0/],
    ['--steps', '0', /--steps must be a positive integer, got 0/],
    ['--workers', '0', /--workers must be a positive integer, got 0/],
  ] as const)
    oneLine(
      await cli([
        ...without(TRAIN, flag),
        '--data',
        data,
        '--out',
        path.join(dir, 'never'),
        ...(flag === '--steps' ? [] : ['--steps', '2']),
        flag,
        value,
      ]),
      want,
    );
  assert.ok(!existsSync(path.join(dir, 'never')));
  oneLine(
    await cli([...without(TRAIN, '--model'), '--data', data, '--out', path.join(dir, 'b16'), '--steps', '2', '--model', 'vit-b16']),
    /--model vit-b16 needs 224x224 images but the dataset has 32x32; prepare the data with --image-size 224/,
  );
  const headRun = (...flags: string[]) => cli([...TRAIN, '--data', data, '--out', path.join(dir, 'thead'), '--steps', '2', ...flags]);
  oneLine(await headRun('--text-head', 'transformer', '--text-head-layers', '0'), /--text-head-layers must be a positive integer, got 0/);
  oneLine(
    await headRun('--text-head', 'transformer'),
    /--text-head transformer attends over a text tower's tokens: it needs --pretrained DIR with its text tower .*, not learnable prompts/,
  );
  assert.ok(!existsSync(path.join(dir, 'thead', 'model.bin')));
});

test('`coordinator train --help` is the training command help, and `coordinator train ...` trains like `coordinator ...`', async () => {
  const h = await cli(['train', '--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /^coordinator train\n/);
  assert.match(h.stdout, /--max-restarts/);
  const r = await cli(['train', ...TRAIN, '--data', data, '--out', path.join(dir, 'named'), '--steps', '1']);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(path.join(dir, 'named', 'model.bin')));
});

test('a full disk while saving a checkpoint names the shard file and says the previous checkpoint is intact; no socket files are left', async (t) => {
  const mnt = path.join(dir, 'small');
  await mkdir(mnt);
  // A tiny model's checkpoint is about 10 MB: 16 MiB fills up within a few of them.
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mnt]);
  if (m.status !== 0) return t.skip(`cannot mount a tmpfs here (${m.stderr.toString().trim()}): needs root`);
  try {
    // The job's own temp dir, so sockets of other jobs running beside the suite are not counted.
    const jobTmp = path.join(dir, 'full-disk-tmp');
    await mkdir(jobTmp);
    const out = path.join(mnt, 'run');
    const r = await cli([...TRAIN, '--data', data, '--out', out, '--steps', '6', '--checkpoint-every', '2', '--keep-checkpoints', '3'], {
      TMPDIR: jobTmp,
    });
    oneLine(
      r,
      /worker rank \d \(.*\) failed: .*\/step-000000\d\/shard-0000\d-of-00002\.bin: no space left on device \(ENOSPC\); the previous committed checkpoint in .*\/checkpoints is intact: free space, then resume the run/,
      1,
    );
    // Saves run in the background, so the failure reported may be a later save's than the first to
    // fail (ranks race): what must hold is that the resume point is the newest committed checkpoint.
    const failed = Number(/step-000000(\d)\/shard/.exec(r.stderr)![1]);
    const from = /continue from .*step-000000(\d) \(step (\d)\) with --resume /.exec(r.stderr);
    const committed = readdirSync(path.join(out, 'checkpoints'))
      .filter((d) => existsSync(path.join(out, 'checkpoints', d, 'manifest.json')))
      .map((d) => Number(/^step-(\d+)$/.exec(d)![1]));
    assert.ok(from && Number(from[2]) < failed && Number(from[2]) === Math.max(...committed), `${r.stderr}\ncommitted: ${committed}`);
    assert.doesNotMatch(r.stderr, /restart 1 of/, 'a full disk is not retried');
    const v = await cli(['checkpoints', '--run', out, '--verify']);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const after = readdirSync(jobTmp).filter((f) => f.startsWith('cxr-collective-'));
    assert.deepEqual(after, [], 'no Unix socket files of the aborted job');
  } finally {
    spawnSync('umount', [mnt]);
  }
});
