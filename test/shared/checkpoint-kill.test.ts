import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildLayout } from '../../shared/params.js';
import { shardRange } from '../../shared/shard.js';
import {
  CheckpointWriter,
  checkpointsDir,
  commitCheckpoint,
  layoutHash,
  loadCheckpoint,
  removeUncommitted,
  resolveCheckpoint,
  stepDir,
} from '../../shared/checkpoint/index.js';

/**
 * A real process is SIGKILLed in the middle of a save; the next load must ignore the uncommitted
 * directory and resume from the previous committed checkpoint. The same file is the child when
 * CXR_CKPT_KILL_CHILD names a run directory.
 */
const layout = buildLayout([
  { name: 'visual.proj', shape: [1024, 1536], decay: true },
  { name: 'logit_scale', shape: [], decay: false },
]);
const WORLD = 2;

/** Deterministic contents per step, so the parent can check the bits without talking to the child. */
function stateFor(step: number): { params: Float32Array; m: Float32Array; v: Float32Array } {
  const gen = (salt: number) => {
    const a = new Uint32Array(layout.total);
    let x = (step * 2654435761 + salt) >>> 0 || 1;
    for (let i = 0; i < a.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      a[i] = x >>> 0;
    }
    return new Float32Array(a.buffer);
  };
  return { params: gen(1), m: gen(2), v: gen(3) };
}

async function saveStep(run: string, step: number, commitDelayMs: number): Promise<void> {
  const s = stateFor(step);
  const dir = stepDir(checkpointsDir(run), step);
  const writers = Array.from({ length: WORLD }, () => new CheckpointWriter());
  const reports = await Promise.all(
    writers.map((w, rank) => {
      const r = shardRange(layout.total, WORLD, rank);
      return w.save(dir, {
        rank,
        world: WORLD,
        step,
        layoutHash: layoutHash(layout),
        ...r,
        params: s.params.subarray(r.start, r.end),
        m: s.m.subarray(r.start, r.end),
        v: s.v.subarray(r.start, r.end),
      });
    }),
  );
  await Promise.all(writers.map((w) => w.close()));
  // A coordinator waiting for a slow rank's report: the window in which a kill leaves shards but no manifest.
  await new Promise((res) => setTimeout(res, commitDelayMs));
  await commitCheckpoint(dir, {
    step,
    epoch: 0,
    sampler: { position: step },
    rng: null,
    config: {},
    layout,
    world: WORLD,
    shards: reports,
  });
  process.stdout.write(`committed ${step}\n`);
}

const childRun = process.env.CXR_CKPT_KILL_CHILD;
if (childRun) {
  await saveStep(childRun, 10, 0);
  await saveStep(childRun, 20, 5000);
} else {
  test('SIGKILL in the middle of a save: the next load ignores the uncommitted directory and resumes from the previous one', async (t) => {
    const run = mkdtempSync(path.join(os.tmpdir(), 'cxr-ckpt-kill-'));
    try {
      const child = spawn(process.execPath, [fileURLToPath(import.meta.url)], {
        env: { ...process.env, CXR_CKPT_KILL_CHILD: run },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
      const dir20 = stepDir(checkpointsDir(run), 20);
      let sawTemp = false;
      const deadline = Date.now() + 60_000;
      // Kill as soon as step 20 has a shard being written (a temp file), or at the latest once its shards are in place.
      for (;;) {
        if (child.exitCode !== null) assert.fail(`child exited before the kill (code ${child.exitCode}, stdout: ${out})`);
        if (existsSync(dir20)) {
          const names = readdirSync(dir20);
          if (names.some((n) => n.includes('.tmp-'))) {
            sawTemp = true;
            break;
          }
          if (names.filter((n) => n.endsWith('.bin')).length === WORLD) break;
        }
        if (Date.now() > deadline) assert.fail('child never started the second save');
        await new Promise((res) => setTimeout(res, 2));
      }
      child.kill('SIGKILL');
      await exited;
      t.diagnostic(
        `killed ${sawTemp ? 'while a shard was being written' : 'after the shards, before the commit'}; child said: ${out.trim()}`,
      );
      assert.match(out, /committed 10/);
      assert.doesNotMatch(out, /committed 20/);
      assert.equal(existsSync(path.join(dir20, 'manifest.json')), false);

      const want = stateFor(10);
      const got = await loadCheckpoint(run, { world: 1, rank: 0, layout });
      assert.equal(got.step, 10);
      assert.deepEqual(got.manifest.sampler, { position: 10 });
      assert.ok(Buffer.from(got.params.buffer).equals(Buffer.from(want.params.buffer)));
      assert.ok(Buffer.from(got.v.buffer).equals(Buffer.from(want.v.buffer)));
      assert.equal((await resolveCheckpoint(run, { layout })).manifest.step, 10);
      // The restarted coordinator clears the crashed save before training on.
      assert.deepEqual(await removeUncommitted(checkpointsDir(run)), [dir20]);
    } finally {
      rmSync(run, { recursive: true, force: true });
    }
  });
}
