import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildLayout } from '../../shared/params.js';
import { shardRange } from '../../shared/shard.js';
import {
  CheckpointWriter,
  checkpointsDir,
  commitCheckpoint,
  layoutHash,
  loadCheckpoint,
  resolveCheckpoint,
  stepDir,
  type ShardWritten,
} from '../../shared/checkpoint/index.js';

/**
 * The contract the trainer relies on: params + AdamW m, v + the step counter in a checkpoint are
 * all the optimizer state there is, so ZeRO-1 training (each rank updates its shard, then the
 * shards are gathered) resumed from a checkpoint, on any world size, continues bit for bit.
 * A float32 AdamW on a toy objective stands in for the model here.
 */
const layout = buildLayout([
  { name: 'w', shape: [37, 5], decay: true },
  { name: 'b', shape: [11], decay: false },
]);
const decay = new Uint8Array(layout.total);
for (const e of layout.entries) decay.fill(e.decay ? 1 : 0, e.offset, e.offset + e.size);

const f = Math.fround;
function grad(p: Float32Array, step: number): Float32Array {
  const g = new Float32Array(p.length);
  for (let i = 0; i < p.length; i++) g[i] = f(f(p[i]! - f(Math.sin(i * 0.37))) + f(Math.cos(step * 1.3 + i) * 0.1));
  return g;
}

/** One ZeRO-1 step: rank r updates [start, end) of params with its own m, v; then all-gather. */
function step(p: Float32Array, shards: { m: Float32Array; v: Float32Array }[], world: number, t: number): Float32Array {
  const [lr, b1, b2, eps, wd] = [f(1e-2), f(0.9), f(0.999), f(1e-8), f(0.05)];
  const g = grad(p, t);
  const next = new Float32Array(p.length);
  for (let r = 0; r < world; r++) {
    const { start, end } = shardRange(p.length, world, r);
    const { m, v } = shards[r]!;
    const c1 = f(1 - b1 ** t);
    const c2 = f(1 - b2 ** t);
    for (let i = start; i < end; i++) {
      const k = i - start;
      m[k] = f(f(b1 * m[k]!) + f(f(1 - b1) * g[i]!));
      v[k] = f(f(b2 * v[k]!) + f(f(1 - b2) * f(g[i]! * g[i]!)));
      const upd = f(f(m[k]! / c1) / f(f(Math.sqrt(f(v[k]! / c2))) + eps));
      next[i] = f(p[i]! - f(lr * f(upd + (decay[i] ? f(wd * p[i]!) : 0))));
    }
  }
  return next;
}

function fresh(world: number) {
  return Array.from({ length: world }, (_, r) => {
    const { start, end } = shardRange(layout.total, world, r);
    return { m: new Float32Array(end - start), v: new Float32Array(end - start) };
  });
}

test('10 steps + checkpoint + resume to 20 equals 20 straight, bit for bit, on 2 -> 2, 2 -> 4, 4 -> 2 and 2 -> 1 workers', async () => {
  const init = new Float32Array(layout.total).map((_, i) => f(Math.cos(i)));
  let straight: Float32Array = init.slice();
  const s2 = fresh(2);
  for (let t = 1; t <= 20; t++) straight = step(straight, s2, 2, t);

  for (const [from, to] of [
    [2, 2],
    [2, 4],
    [4, 2],
    [2, 1],
  ] as const) {
    const run = mkdtempSync(path.join(os.tmpdir(), 'cxr-resume-'));
    try {
      let p: Float32Array = init.slice();
      const shards = fresh(from);
      for (let t = 1; t <= 10; t++) p = step(p, shards, from, t);
      const dir = stepDir(checkpointsDir(run), 10);
      const writers = shards.map(() => new CheckpointWriter());
      const reports: ShardWritten[] = await Promise.all(
        writers.map((w, rank) => {
          const r = shardRange(layout.total, from, rank);
          return w.save(dir, {
            rank,
            world: from,
            step: 10,
            layoutHash: layoutHash(layout),
            ...r,
            params: p.subarray(r.start, r.end),
            ...shards[rank]!,
          });
        }),
      );
      await Promise.all(writers.map((w) => w.close()));
      await commitCheckpoint(dir, {
        step: 10,
        epoch: 0,
        sampler: { position: 10 * 64 },
        rng: null,
        config: {},
        layout,
        world: from,
        shards: reports,
      });

      const chosen = await resolveCheckpoint(run, { layout });
      const parts = await Promise.all(Array.from({ length: to }, (_, rank) => loadCheckpoint(chosen.dir, { world: to, rank, layout })));
      let q = parts[0]!.params;
      const resumed = parts.map((x) => ({ m: x.m, v: x.v }));
      for (let t = chosen.manifest.step + 1; t <= 20; t++) q = step(q, resumed, to, t);
      assert.ok(Buffer.from(q.buffer).equals(Buffer.from(straight.buffer)), `${from} -> ${to} workers`);
    } finally {
      rmSync(run, { recursive: true, force: true });
    }
  }
});
