import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  copyFileSync,
  mkdtempSync,
  rmSync,
  readdirSync,
  existsSync,
  writeFileSync,
  mkdirSync,
  openSync,
  readSync,
  writeSync,
  closeSync,
  statSync,
  truncateSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildLayout, type ParamLayout } from '../../shared/params.js';
import { shardRange } from '../../shared/shard.js';
import { pack, packing, unpack } from '../../shared/trainable.js';
import { UserError } from '../../shared/util/errors.js';
import {
  CheckpointWriter,
  CheckpointCorruptError,
  checkpointsDir,
  commitCheckpoint,
  layoutHash,
  listCheckpoints,
  loadCheckpoint,
  pruneCheckpoints,
  removeUncommitted,
  resolveCheckpoint,
  ShardReader,
  stepDir,
  writeShard,
  type ShardWritten,
} from '../../shared/checkpoint/index.js';

const layout: ParamLayout = buildLayout([
  { name: 'visual.conv1.weight', shape: [4, 4, 1, 8], decay: true },
  { name: 'visual.class_embedding', shape: [8], decay: false },
  { name: 'visual.transformer.resblocks.0.attn.in_proj_weight', shape: [8, 24], decay: true },
  { name: 'logit_scale', shape: [], decay: false },
  { name: 'head.bias', shape: [13], decay: false },
]);

/** Arbitrary bit patterns (NaNs, denormals, -0 included): equality is checked on the bits. */
function randomFloats(n: number): Float32Array {
  return new Float32Array(randomBytes(n * 4).buffer.slice(0, n * 4));
}
function bits(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

interface State {
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
}
function randomState(): State {
  return { params: randomFloats(layout.total), m: randomFloats(layout.total), v: randomFloats(layout.total) };
}

/**
 * Every rank of `world` writes its shard concurrently (own writer thread each), then the commit.
 * With `frozen` entries s.m and s.v are the packed trainable vector's moments (--freeze).
 */
async function save(runDir: string, step: number, world: number, s: State, blockBytes = 64, frozen: string[] = []): Promise<void> {
  const dir = stepDir(checkpointsDir(runDir), step);
  const writers = Array.from({ length: world }, () => new CheckpointWriter());
  const moments = frozen.length ? packing(layout, frozen).size : layout.total;
  const reports: ShardWritten[] = await Promise.all(
    writers.map((w, rank) => {
      const r = shardRange(layout.total, world, rank);
      const mr = shardRange(moments, world, rank);
      return w.save(dir, {
        rank,
        world,
        step,
        layoutHash: layoutHash(layout),
        start: r.start,
        end: r.end,
        params: s.params.subarray(r.start, r.end),
        m: s.m.subarray(mr.start, mr.end),
        v: s.v.subarray(mr.start, mr.end),
        packed: frozen.length > 0,
        extra: new TextEncoder().encode(JSON.stringify({ rank, step })),
        blockBytes,
      });
    }),
  );
  await Promise.all(writers.map((w) => w.close()));
  await commitCheckpoint(dir, {
    step,
    epoch: 1,
    sampler: { epoch: 1, position: step * 32 },
    rng: { seed: 7 },
    config: { model: { preset: 'tiny' }, labelSet: 'chexpert14' },
    layout,
    frozen,
    world,
    shards: reports,
  });
}

function tmpRun(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'cxr-ckpt-'));
}

async function loadAll(p: string, world: number) {
  const parts = [];
  for (let rank = 0; rank < world; rank++) parts.push(await loadCheckpoint(p, { world, rank, layout }));
  return parts;
}

test('resharding is exact: saved by 2 ranks, loaded by 1, 2, 4 (and 4 -> 2) bit for bit', async () => {
  const run = tmpRun();
  try {
    const s = randomState();
    await save(run, 10, 2, s);
    for (const world of [1, 2, 4, 3]) {
      const parts = await loadAll(run, world);
      for (const p of parts) assert.ok(bits(p.params).equals(bits(s.params)), `params world ${world}`);
      const cat = (k: 'm' | 'v') => Buffer.concat(parts.map((p) => bits(p[k])));
      assert.ok(cat('m').equals(bits(s.m)), `m world ${world}`);
      assert.ok(cat('v').equals(bits(s.v)), `v world ${world}`);
      parts.forEach((p, r) => assert.deepEqual(p.range, shardRange(layout.total, world, r)));
      assert.equal(parts[0]!.step, 10);
      assert.deepEqual(parts[0]!.manifest.sampler, { epoch: 1, position: 320 });
      // Per-rank extra state only comes back when the world is unchanged.
      if (world === 2) assert.deepEqual(JSON.parse(new TextDecoder().decode(parts[1]!.extra!)), { rank: 1, step: 10 });
      else assert.equal(parts[0]!.extra, null);
    }
    // 4 -> 2: save again from the 4-rank view, load with 2.
    const s4 = randomState();
    await save(run, 20, 4, s4);
    const two = await loadAll(run, 2);
    assert.equal(two[0]!.step, 20);
    assert.ok(Buffer.concat(two.map((p) => bits(p.m))).equals(bits(s4.m)));
    assert.ok(Buffer.concat(two.map((p) => bits(p.v))).equals(bits(s4.v)));
    assert.ok(bits(two[1]!.params).equals(bits(s4.params)));
    const shard = await loadCheckpoint(run, { world: 4, rank: 3, layout, params: 'shard' });
    assert.ok(bits(shard.params).equals(bits(s4.params.subarray(shard.range.start, shard.range.end))));
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('packed moments (--freeze): only the trainable entries have m and v; resharded, with another frozen set (zero for newly trainable ones) and from a full checkpoint', async () => {
  const run = tmpRun();
  try {
    const frozen = ['visual.conv1.weight', 'logit_scale'];
    const p = packing(layout, frozen);
    const s = { params: randomFloats(layout.total), m: randomFloats(p.size), v: randomFloats(p.size) };
    await save(run, 10, 2, s, 64, frozen);
    const dir = stepDir(checkpointsDir(run), 10);
    const files = readdirSync(dir).filter((f) => f.endsWith('.bin'));
    // Each shard holds its whole params slice and its slice of the packed moments: 2 * 4 bytes per frozen element fewer in all.
    const sections = files.map((f) => {
      const b = Buffer.alloc(128);
      const fd = openSync(path.join(dir, f), 'r');
      readSync(fd, b, 0, 128, 0);
      closeSync(fd);
      return { version: b.readUInt32LE(8), params: Number(b.readBigUInt64LE(88)), m: Number(b.readBigUInt64LE(96)) };
    });
    assert.deepEqual(
      sections.map((x) => x.version),
      [2, 2],
    );
    assert.equal(
      sections.reduce((a, x) => a + x.params, 0),
      layout.total * 4,
    );
    assert.equal(
      sections.reduce((a, x) => a + x.m, 0),
      (layout.total - 4 * 4 * 8 - 1) * 4,
    );
    for (const world of [1, 2, 3]) {
      const parts = [];
      for (let rank = 0; rank < world; rank++) parts.push(await loadCheckpoint(run, { world, rank, layout, frozen }));
      for (const q of parts) assert.ok(bits(q.params).equals(bits(s.params)), `params world ${world}`);
      assert.ok(Buffer.concat(parts.map((q) => bits(q.m))).equals(bits(s.m)), `m world ${world}`);
      assert.ok(Buffer.concat(parts.map((q) => bits(q.v))).equals(bits(s.v)), `v world ${world}`);
      parts.forEach((q, r) => assert.deepEqual(q.momentsRange, shardRange(p.size, world, r)));
    }
    // Another --freeze: what both train keeps its moments, what this run trains anew starts at zero.
    const now = packing(layout, ['head.bias']);
    const unpacked = (x: Float32Array) => {
      const f = new Float32Array(layout.total);
      unpack(p, x, f);
      return f;
    };
    const parts = [0, 1].map((rank) => loadCheckpoint(run, { world: 2, rank, layout, frozen: ['head.bias'] }));
    const m = Buffer.concat((await Promise.all(parts)).map((q) => bits(q.m)));
    assert.ok(m.equals(bits(pack(now, unpacked(s.m)))));
    // A checkpoint with every entry's moments (before --freeze existed) resumes a frozen run: it takes the trainable ones.
    const old = randomState();
    await save(run, 20, 2, old);
    const sub = await Promise.all([0, 1, 2].map((rank) => loadCheckpoint(run, { world: 3, rank, layout, frozen })));
    assert.ok(Buffer.concat(sub.map((q) => bits(q.v))).equals(bits(pack(p, old.v))));
    // The commit checks the moments' length against the frozen set.
    await assert.rejects(
      save(run, 30, 2, old, 64, []).then(() => save(run, 31, 2, s, 64, ['logit_scale'])),
      /holds \d+ moments \(format version 2\), expected/,
    );
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('the writer copies out at save(): later changes to the live arrays are not in the checkpoint', async () => {
  const run = tmpRun();
  try {
    const s = randomState();
    const want = bits(s.params.slice());
    const dir = stepDir(checkpointsDir(run), 5);
    const w = new CheckpointWriter();
    const done = w.save(dir, { rank: 0, world: 1, step: 5, layoutHash: layoutHash(layout), start: 0, end: layout.total, ...s });
    s.params.fill(0); // training goes on while the write is in flight
    const rep = await done;
    await w.idle();
    assert.ok(w.stats.lastStallMs >= 0 && w.stats.saves === 1);
    await w.close();
    await commitCheckpoint(dir, { step: 5, epoch: 0, sampler: null, rng: null, config: {}, layout, world: 1, shards: [rep] });
    const got = await loadCheckpoint(dir, { world: 1, rank: 0, layout });
    assert.ok(bits(got.params).equals(want));
    assert.equal(rep.bytes, statSync(rep.path).size);
    // The next saves copy into the first save's staging buffers; a smaller shard and a given-away
    // (transferred, copy: false) array must come out exact too.
    const w3 = new CheckpointWriter();
    const half = Math.floor(layout.total / 2);
    const states = [randomState(), randomState(), randomState()];
    for (const [i, st] of states.entries()) {
      const end = i === 1 ? half : layout.total;
      const d = stepDir(checkpointsDir(run), 100 + i);
      const own = i === 2 ? { params: st.params.slice(), m: st.m.slice(), v: st.v.slice() } : null;
      const r = await w3.save(
        d,
        {
          rank: 0,
          world: 1,
          step: 100 + i,
          layoutHash: layoutHash(layout),
          start: 0,
          end,
          params: (own ?? st).params.subarray(0, end),
          m: (own ?? st).m.subarray(0, end),
          v: (own ?? st).v.subarray(0, end),
        },
        { copy: !own },
      );
      if (own) assert.equal(own.params.byteLength, 0, 'copy: false transfers the buffer to the writer thread');
      if (i === 1) {
        // A partial range is no committable checkpoint: read the shard file directly.
        const rd = await ShardReader.open(r.path);
        const got = new Float32Array(half);
        await rd.readFloats('m', 0, half, got);
        await rd.close();
        assert.ok(bits(got).equals(bits(st.m.subarray(0, half))));
        continue;
      }
      await commitCheckpoint(d, { step: 100 + i, epoch: 0, sampler: null, rng: null, config: {}, layout, world: 1, shards: [r] });
      const back = await loadCheckpoint(d, { world: 1, rank: 0, layout });
      assert.ok(bits(back.params).equals(bits(st.params)) && bits(back.v).equals(bits(st.v)), `save ${i}`);
    }
    await w3.close();
    // A failing save surfaces at idle().
    const w2 = new CheckpointWriter();
    void w2.save(dir, { rank: 0, world: 1, step: 5, layoutHash: layoutHash(layout), start: 0, end: 3, ...s }).catch(() => {});
    await assert.rejects(w2.idle(), /range \[0, 3\) has 3 elements/);
    await w2.close();
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('a corrupt or truncated shard is a clear error; from a run directory the loader falls back with a warning', async () => {
  const run = tmpRun();
  try {
    const old = randomState();
    await save(run, 10, 2, old);
    await save(run, 20, 2, randomState());
    const shard = path.join(stepDir(checkpointsDir(run), 20), 'shard-00001-of-00002.bin');
    // Flip one byte inside the m section of rank 1's shard (inverted, so it always changes:
    // writing a fixed value left random data as it was one time in 256).
    const at = 128 + (shardRange(layout.total, 2, 1).end - shardRange(layout.total, 2, 1).start) * 4 + 10;
    const fd = openSync(shard, 'r+');
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, at);
    writeSync(fd, Buffer.from([byte[0]! ^ 0xff]), 0, 1, at);
    closeSync(fd);
    await assert.rejects(
      loadCheckpoint(stepDir(checkpointsDir(run), 20), { world: 1, rank: 0, layout }),
      (e: Error) => e instanceof CheckpointCorruptError && /shard-00001-of-00002\.bin: checksum mismatch in m block/.test(e.message),
    );
    const warnings: string[] = [];
    const got = await loadCheckpoint(run, { world: 1, rank: 0, layout, onWarning: (m) => warnings.push(m) });
    assert.equal(got.step, 10);
    assert.ok(bits(got.m).equals(bits(old.m)));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /step-0000020.*falling back/);
    assert.deepEqual(got.skipped, [stepDir(checkpointsDir(run), 20)]);
    // The coordinator's choice: every byte verified, so all ranks fall back together.
    const chosen = await resolveCheckpoint(run, { layout });
    assert.equal(chosen.manifest.step, 10);

    // A whole, self-consistent shard from another save of the same step is still not this checkpoint's.
    const run2 = tmpRun();
    try {
      await save(run2, 10, 2, randomState());
      copyFileSync(
        path.join(stepDir(checkpointsDir(run2), 10), 'shard-00000-of-00002.bin'),
        path.join(stepDir(checkpointsDir(run), 10), 'shard-00000-of-00002.bin'),
      );
    } finally {
      rmSync(run2, { recursive: true, force: true });
    }
    await assert.rejects(
      loadCheckpoint(stepDir(checkpointsDir(run), 10), { world: 2, rank: 1, layout }),
      /shard-00000-of-00002\.bin: header or block checksums differ from those manifest\.json recorded/,
    );

    truncateSync(shard, statSync(shard).size - 7);
    await assert.rejects(
      loadCheckpoint(stepDir(checkpointsDir(run), 20), { world: 2, rank: 0, layout }),
      /truncated: \d+ bytes, its header says \d+/,
    );
    // Both corrupt: nothing to fall back to.
    truncateSync(path.join(stepDir(checkpointsDir(run), 10), 'shard-00000-of-00002.bin'), 100);
    await assert.rejects(loadCheckpoint(run, { world: 1, rank: 0, layout }), /no intact committed checkpoint/);
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('another model or config is refused naming the first mismatching parameter, without fallback', async () => {
  const run = tmpRun();
  try {
    await save(run, 10, 2, randomState());
    const wider = buildLayout(layout.entries.map((e) => (e.name === 'head.bias' ? { ...e, shape: [14] } : e)));
    await assert.rejects(
      loadCheckpoint(run, { world: 1, rank: 0, layout: wider }),
      (e: Error) =>
        e instanceof UserError &&
        !(e instanceof CheckpointCorruptError) &&
        /parameter 'head.bias' has shape \[13\] in the checkpoint, this model has \[14\]/.test(e.message),
    );
    const shorter = buildLayout(layout.entries.slice(0, -1));
    await assert.rejects(
      loadCheckpoint(run, { world: 1, rank: 0, layout: shorter }),
      /the checkpoint has a parameter this model lacks: 'head.bias' \[13\]/,
    );
    await assert.rejects(
      loadCheckpoint(run, { world: 1, rank: 0, layout, requireConfig: { labelSet: 'nih14' } }),
      /trained with labelSet="chexpert14", this run has labelSet="nih14"/,
    );
    const ok = await loadCheckpoint(run, { world: 1, rank: 0, layout, requireConfig: { 'model.preset': 'tiny' } });
    assert.equal(ok.step, 10);
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('uncommitted directories are never loaded; retention keeps the newest K and clears crashed saves', async () => {
  const run = tmpRun();
  try {
    const root = checkpointsDir(run);
    await assert.rejects(loadCheckpoint(run, { world: 1, rank: 0, layout }), /does not exist|no committed checkpoint/);
    for (const step of [10, 20, 30]) await save(run, step, 1, randomState());
    // A crashed save at 25 (older than the newest commit) and one in progress at 40.
    for (const step of [25, 40]) {
      mkdirSync(stepDir(root, step));
      writeFileSync(path.join(stepDir(root, step), 'shard-00000-of-00001.bin'), 'partial');
    }
    await assert.rejects(
      loadCheckpoint(stepDir(root, 40), { world: 1, rank: 0, layout }),
      /has no manifest\.json: the save that wrote it never committed/,
    );
    assert.equal((await loadCheckpoint(run, { world: 1, rank: 0, layout })).step, 30);
    const deleted = await pruneCheckpoints(root, 2);
    assert.deepEqual(deleted.map((d) => path.basename(d)).sort(), ['step-0000010', 'step-0000025']);
    assert.deepEqual(
      (await listCheckpoints(root)).map((c) => [c.step, c.committed]),
      [
        [20, true],
        [30, true],
        [40, false],
      ],
    );
    assert.deepEqual(
      (await pruneCheckpoints(root, 0)).map((d) => path.basename(d)),
      ['step-0000020'],
    ); // never the newest
    assert.deepEqual(
      (await removeUncommitted(root)).map((d) => path.basename(d)),
      ['step-0000040'],
    );
    assert.deepEqual(readdirSync(root), ['step-0000030']);
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('commit refuses a missing or foreign shard and drops leftovers of another world size', async () => {
  const run = tmpRun();
  try {
    const s = randomState();
    const dir = stepDir(checkpointsDir(run), 7);
    const r0 = shardRange(layout.total, 2, 0);
    const rep = await writeShard(dir, {
      rank: 0,
      world: 2,
      step: 7,
      layoutHash: layoutHash(layout),
      ...r0,
      params: s.params.subarray(r0.start, r0.end),
      m: s.m.subarray(r0.start, r0.end),
      v: s.v.subarray(r0.start, r0.end),
    });
    const base = { step: 7, epoch: 0, sampler: null, rng: null, config: {}, layout };
    await assert.rejects(commitCheckpoint(dir, { ...base, world: 2, shards: [rep] }), /no shard reported by rank 1 of 2/);
    assert.equal(existsSync(path.join(dir, 'manifest.json')), false);
    await assert.rejects(
      commitCheckpoint(dir, { ...base, world: 2, shards: [rep, { ...rep, rank: 1 }] }),
      /rank 1 wrote \[0, \d+\), expected/,
    );
    await assert.rejects(
      commitCheckpoint(dir, { ...base, step: 8, world: 1, shards: [{ ...rep, end: layout.total, file: 'shard-00000-of-00002.bin' }] }),
      /reported file/,
    );
    // A crashed 2-rank attempt left rank 0's shard; the 1-rank save that commits drops it.
    const one = await writeShard(dir, { rank: 0, world: 1, step: 7, layoutHash: layoutHash(layout), start: 0, end: layout.total, ...s });
    writeFileSync(path.join(dir, '.shard-00000-of-00001.bin.tmp-1-abcd'), 'x');
    await commitCheckpoint(dir, { ...base, world: 1, shards: [one] });
    assert.deepEqual(readdirSync(dir).sort(), ['manifest.json', 'shard-00000-of-00001.bin']);
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});

test('a resharding load reads and verifies only the byte ranges it needs', async () => {
  const run = tmpRun();
  try {
    const s = randomState();
    await save(run, 10, 2, s); // 64-byte blocks
    const dir = stepDir(checkpointsDir(run), 10);
    const old1 = shardRange(layout.total, 2, 1);
    // Damage the last block of rank 1's v section: only new ranks whose range reaches the end read it.
    const vEnd = 128 + (old1.end - old1.start) * 12;
    const fd = openSync(path.join(dir, 'shard-00001-of-00002.bin'), 'r+');
    writeSync(fd, Buffer.from([0xde, 0xad]), 0, 2, vEnd - 3);
    closeSync(fd);
    for (const rank of [0, 1, 2]) {
      const got = await loadCheckpoint(dir, { world: 4, rank, layout, params: 'shard' });
      assert.ok(bits(got.v).equals(bits(s.v.subarray(got.range.start, got.range.end))), `rank ${rank}`);
    }
    await assert.rejects(
      loadCheckpoint(dir, { world: 4, rank: 3, layout, params: 'shard' }),
      /shard-00001-of-00002\.bin: checksum mismatch in v block/,
    );
    await assert.rejects(resolveCheckpoint(dir, { layout }), CheckpointCorruptError);
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});
