import { test } from 'node:test';
import assert from 'node:assert/strict';
import yargs from 'yargs';
import { checkpointDue } from '../../shared/checkpoint/schedule.js';
import { checkCheckpointFlags, checkpointFlags, type CheckpointFlags } from '../../coordinator/train/checkpoint-flags.js';

test('checkpoints fall due every N steps and every M minutes, never twice for one step', () => {
  const t0 = 1_000_000;
  const st = (step: number, lastStep = 0, lastAtMs = t0) => ({ step, lastStep, lastAtMs });
  assert.equal(checkpointDue({ everySteps: 10 }, st(10), t0), true);
  assert.equal(checkpointDue({ everySteps: 10 }, st(11), t0), false);
  assert.equal(checkpointDue({ everySteps: 10 }, st(20, 20), t0), false, 'resumed at 20: not again at 20');
  assert.equal(checkpointDue({ everyMinutes: 5 }, st(3), t0 + 299_999), false);
  assert.equal(checkpointDue({ everyMinutes: 5 }, st(3), t0 + 300_000), true);
  assert.equal(checkpointDue({}, st(1000), t0 + 1e9), false);
  assert.equal(checkpointDue({ everySteps: 0, everyMinutes: 0 }, st(10), t0 + 1e9), false);
});

test('checkpoint flags: parsed to camelCase, refused with the flag named', async () => {
  const a = (await checkpointFlags(yargs(['--checkpoint-every', '50', '--keep-checkpoints', '2', '--resume', 'runs/a']))
    .exitProcess(false)
    .parseAsync()) as unknown as CheckpointFlags;
  assert.deepEqual(
    [a.checkpointEvery, a.checkpointEveryMinutes, a.keepCheckpoints, a.resume],
    [50, 10, 2, 'runs/a'],
    'a checkpoint every 10 minutes by default',
  );
  const base: CheckpointFlags = { checkpointEvery: 0, checkpointEveryMinutes: 0, keepCheckpoints: 3 };
  assert.throws(() => checkCheckpointFlags({ ...base, checkpointEvery: 2.5 }), /--checkpoint-every must be a whole number >= 0, got 2.5/);
  assert.throws(() => checkCheckpointFlags({ ...base, keepCheckpoints: 0 }), /--keep-checkpoints must be a whole number >= 1/);
  assert.throws(() => checkCheckpointFlags({ ...base, resume: 'a', initWeights: 'b' }), /--resume and --init-weights exclude each other/);
});
