import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ProcessGroup, referenceSum, type DataPath } from '../../worker/collectives/index.js';
import { encodeHeader, MsgType, FLAG_SHM } from '../../worker/collectives/protocol.js';
import { shmNative } from '../../native/addon.js';
import {
  DEFAULT_SHM_DIR,
  ShmPeer,
  ShmSegment,
  decodeDescriptor,
  decodeRelease,
  encodeDescriptor,
  encodeRelease,
  shmDirProblem,
  shmSlots,
  sweepStaleSegments,
} from '../../worker/collectives/transport/shm.js';
import { randomTensor } from '../fixtures/collective-data.js';
import { assertNamedWithin, runRanks, runWithForgedMessages, runWithStoppedRank } from '../fixtures/collective-cluster.js';
import type { RankOp } from '../fixtures/collective-rank.js';

// Every test here needs a tmpfs; a host without /dev/shm runs the socket path only (collectives.test.ts).
const skip = shmDirProblem(DEFAULT_SHM_DIR) ?? false;
const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);
const shmTempDir = (): string => mkdtempSync(path.join(DEFAULT_SHM_DIR, 'cxr-shm-test-'));

test('descriptors and releases round-trip and reject what cannot be one', () => {
  assert.deepEqual(decodeDescriptor(encodeDescriptor(2 ** 40 + 5, 4 << 20)), { counter: 2 ** 40 + 5, bytes: 4 << 20 });
  assert.equal(decodeDescriptor(Buffer.alloc(8)), null);
  const bad = encodeDescriptor(1, 1);
  bad[7] = 1;
  assert.equal(decodeDescriptor(bad), null);
  assert.equal(decodeRelease(encodeRelease(123_456_789_012)), 123_456_789_012);
  assert.equal(decodeRelease(Buffer.alloc(6)), null);
  assert.equal(shmSlots(1 << 20), 8);
  assert.equal(shmSlots(4 << 20), 4);
  assert.equal(shmSlots(64 << 20), 2);
});

test('a directory that is not a tmpfs, or not there, is refused with the reason', () => {
  const disk = mkdtempSync(path.join(tmpdir(), 'cxr-shm-disk-'));
  try {
    const why = shmDirProblem(disk);
    if (why !== null) assert.match(why, /not a tmpfs/);
    assert.match(shmDirProblem(path.join(disk, 'missing'))!, /does not exist/);
    if (why !== null) assert.throws(() => ShmSegment.create(disk, 2, 64), /not a tmpfs/);
  } finally {
    rmSync(disk, { recursive: true, force: true });
  }
});

// Writer and reader each with pwrite/pread or through the addon's mapping, in every combination:
// the bytes in a slot are the same either way.
const { addon } = shmNative();
const ends = addon ? [null, addon] : [null];
for (const w of ends)
  for (const r of ends)
    test(`a segment carries slots from writer to reader in order and never lets a slot be overwritten before its release (writer ${w ? 'mapped' : 'pwrite'}, reader ${r ? 'mapped' : 'pread'})`, {
      skip,
    }, () => {
      const dir = shmTempDir();
      try {
        const seg = ShmSegment.create(dir, 3, 16, w);
        const peer = ShmPeer.open(seg.offer(), r);
        assert.ok(peer instanceof ShmPeer, String(peer));
        assert.equal(peer.floats(4) !== null, r !== null, 'in-place floats exactly when mapped');
        const data = (k: number): Buffer => Buffer.from(Array.from({ length: 16 }, (_, i) => (k * 31 + i) & 255));
        for (let k = 0; k < 3; k++) assert.equal(seg.write(data(k)), k);
        assert.equal(seg.canWrite(), false);
        assert.throws(() => seg.write(data(3)), /no free slot/);
        assert.equal(seg.release(4), false, 'a release beyond what was written');
        for (let k = 0; k < 3; k++) {
          assert.equal(peer.check(k + 1, 16), `shared-memory slot ${k + 1} arrived, expected ${k}`);
          const head = Buffer.alloc(6);
          const tail = Buffer.alloc(10);
          peer.read(head);
          peer.read(tail, 6);
          assert.deepEqual(Buffer.concat([head, tail]), data(k));
          const f = peer.floats(4);
          if (f) assert.deepEqual(Buffer.from(f.buffer, f.byteOffset, 16), data(k));
          peer.advance();
        }
        assert.equal(seg.release(2), true);
        assert.equal(seg.release(1), false, 'a release going backwards');
        for (let k = 3; k < 5; k++) assert.equal(seg.write(data(k)), k);
        assert.equal(seg.canWrite(), false);
        const got = Buffer.alloc(16);
        peer.read(got);
        assert.deepEqual(got, data(3), 'slot 0 holds counter 3 after the wrap');
        assert.match(peer.check(3, 17)!, /exceeds the 16-byte slot/);
        assert.equal(seg.release(5), true);
        assert.throws(() => seg.write(Buffer.alloc(17)), /do not fit/);
        peer.close();
        seg.close();
        assert.deepEqual(readdirSync(dir), []);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

test('segments left by a process killed during its handshake are removed by the next one; live ones stay', { skip }, () => {
  const dir = shmTempDir();
  try {
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const dead = `cxr-collectives-${gone.stdout}-0badf00d`;
    const live = `cxr-collectives-${process.pid}-00c0ffee`;
    for (const name of [dead, live, 'unrelated-file']) writeFileSync(path.join(dir, name), 'x');
    const seg = ShmSegment.create(dir, 2, 64);
    const left = readdirSync(dir).sort();
    assert.ok(!left.includes(dead), `${dead} should have been removed`);
    assert.ok(left.includes(live) && left.includes('unrelated-file'), JSON.stringify(left));
    assert.deepEqual(sweepStaleSegments(dir), []);
    seg.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a segment is only used when it is the announced one: another file or a missing path is told apart', { skip }, () => {
  const dir = shmTempDir();
  try {
    const seg = ShmSegment.create(dir, 2, 64);
    assert.match(String(ShmPeer.open({ ...seg.offer(), token: '00'.repeat(16) })), /not the announced segment/);
    assert.match(String(ShmPeer.open({ ...seg.offer(), path: path.join(dir, 'elsewhere') })), /not visible here/);
    assert.match(String(ShmPeer.open({ path: 3 })), /malformed/);
    writeFileSync(path.join(dir, 'impostor'), Buffer.alloc(64 + 128));
    assert.match(String(ShmPeer.open({ ...seg.offer(), path: path.join(dir, 'impostor') })), /not the announced segment/);
    seg.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const expectSum = (op: RankOp, world: number): Float32Array =>
  referenceSum(
    Array.from({ length: world }, (_, r) => randomTensor(op.length!, op.seed, r)),
    op.wire ?? 'fp32',
  );

test('same-host ranks move data through shared memory with the ring large chunk; segment names are gone after the handshake', {
  skip,
  timeout: 60_000,
}, async () => {
  const shmDir = shmTempDir();
  let during: string[] = ['not checked'];
  // 6 MB buffers: one 2 MB chunk per ring step, 4 steps per all-reduce, so four all-reduces wrap the 4 slots several times.
  const ops: RankOp[] = [0, 1, 2, 3].map((i) => ({
    kind: 'allReduce' as const,
    length: 1_500_007,
    seed: 40 + i,
    ...(i === 2 ? { wire: 'bf16' as const } : {}),
  }));
  // The ring's path (sharedBuffers off): the shared-buffer all-reduce has tests of its own below.
  const { cluster, results } = await runRanks({
    world: 3,
    ops,
    transport: 'tcp',
    shmDir,
    sharedBuffers: false,
    beforeGo: () => void (during = readdirSync(shmDir)),
  });
  try {
    assert.deepEqual(during, [], 'each segment is unlinked once its reader has it open');
    for (const res of results) {
      assert.ok(res?.ok, JSON.stringify(res?.errors));
      assert.deepEqual(res.dataPath, {
        send: 'shared-memory',
        receive: 'shared-memory',
        note: null,
        chunkBytes: 4 << 20,
        allReduce: 'ring',
      });
    }
    ops.forEach((op, i) => {
      const want = bits(expectSum(op, 3));
      for (let r = 0; r < 3; r++) assert.deepEqual(bits(cluster.output(r, i)), want, `op ${i} rank ${r}`);
    });
    assert.deepEqual(readdirSync(shmDir), []);
  } finally {
    cluster.cleanup();
    rmSync(shmDir, { recursive: true, force: true });
  }
});

test('a ring with one rank off shared memory mixes both paths in one collective and keeps the reference bits', {
  skip,
  timeout: 60_000,
}, async () => {
  const ops: RankOp[] = [
    { kind: 'allReduce', length: 100_003, seed: 1 },
    { kind: 'allReduce', length: 100_003, seed: 2, wire: 'fp16' },
    { kind: 'broadcast', length: 70_001, root: 2, seed: 3 },
    { kind: 'allGatherV', counts: [30_000, 0, 41_234], seed: 4 },
  ];
  const { cluster, results } = await runRanks({ world: 3, ops, chunkBytes: 64 << 10, sharedMemory: [true, false, true] });
  try {
    for (const res of results) assert.ok(res?.ok, JSON.stringify(res?.errors));
    // 0 -> 1 and 1 -> 2 touch the rank without it; 2 -> 0 is in shared memory.
    assert.deepEqual(
      results.map((r) => [r!.dataPath!.send, r!.dataPath!.receive, r!.dataPath!.chunkBytes]),
      [
        ['socket', 'shared-memory', 64 << 10],
        ['socket', 'socket', 64 << 10],
        ['shared-memory', 'socket', 64 << 10],
      ],
    );
    assert.match(results[0]!.dataPath!.note!, /rank 1 does not read this rank's segment: shared memory turned off on the reader/);
    assert.match(results[1]!.dataPath!.note!, /shared memory turned off/);
    for (const i of [0, 1])
      for (let r = 0; r < 3; r++) assert.deepEqual(bits(cluster.output(r, i)), bits(expectSum(ops[i]!, 3)), `op ${i} rank ${r}`);
    for (let r = 0; r < 3; r++) assert.deepEqual(bits(cluster.output(r, 2)), bits(randomTensor(70_001, 3, 2)), `broadcast rank ${r}`);
    const gathered = Float32Array.from([...randomTensor(30_000, 4, 0), ...randomTensor(41_234, 4, 2)]);
    for (let r = 0; r < 3; r++) assert.deepEqual(bits(cluster.output(r, 3)), bits(gathered), `allGatherV rank ${r}`);
  } finally {
    cluster.cleanup();
  }
});

test('a forged shared-memory descriptor fails the collective with a protocol error, and abort() recovers the link', {
  skip,
  timeout: 60_000,
}, async () => {
  const length = 50_021;
  const ops: RankOp[] = [10, 11, 12].map((seed) => ({ kind: 'allReduce' as const, length, seed }));
  // Claims rank 1's slot 5 while rank 0 expects slot 0 (the ring's path: shared buffers carry no descriptors).
  const { cluster, results } = await runWithForgedMessages({
    ops,
    sharedBuffers: false,
    forge: async (push) => {
      const h = encodeHeader({
        type: MsgType.DATA,
        op: 'allReduce',
        wire: 'fp32',
        sender: 1,
        flags: FLAG_SHM,
        generation: 0,
        seq: 0,
        step: 0,
        chunk: 0,
        total: length,
      });
      await push.send([h, encodeDescriptor(5, 100_040)]);
    },
  });
  try {
    for (const res of results) {
      assert.ok(res, 'no rank may crash');
      assert.equal(res.dataPath!.send, 'shared-memory');
      assert.equal(res.errors.length, 1, JSON.stringify(res.errors));
      assert.equal(res.errors[0]!.op, 0);
    }
    assert.equal(results[0]!.errors[0]!.code, 'protocol');
    assert.match(results[0]!.errors[0]!.message, /shared-memory slot 5 arrived, expected 0 \(from rank 1\)/);
    for (const i of [1, 2])
      for (const r of [0, 1]) assert.deepEqual(bits(cluster.output(r, i)), bits(expectSum(ops[i]!, 2)), `op ${i} rank ${r}`);
  } finally {
    cluster.cleanup();
  }
});

test('a reader that stops taking slots leaves its writer without room, and the writer names it within the timeout', {
  skip,
  timeout: 60_000,
}, async () => {
  const timeoutMs = 1500;
  // 2 MB through 64 KiB slots: rank 0 fills its 8 slots long before the buffer is through.
  const { cluster, results } = await runWithStoppedRank({
    world: 2,
    timeoutMs,
    transport: 'tcp',
    chunkBytes: 64 << 10,
    shmChunkBytes: 64 << 10,
    sharedBuffers: false,
    ops: [{ kind: 'allReduce', length: 500_000, seed: 1 }],
    stopped: 1,
  });
  try {
    assertNamedWithin(cluster, results, [0], 1, timeoutMs);
  } finally {
    cluster.cleanup();
  }
});

test('CXR_SHM_DISABLE=1 takes every link back to the socket, as NCCL_SHM_DISABLE does', { skip, timeout: 30_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-shm-env-'));
  const endpoints = [0, 1].map((r) => `ipc://${path.join(dir, `r${r}.sock`)}`);
  const pair = async (): Promise<DataPath[]> => {
    const groups = await Promise.all([0, 1].map((rank) => ProcessGroup.create({ rank, world: 2, endpoints, timeoutMs: 10_000 })));
    const bufs = [0, 1].map((r) => randomTensor(30_000, 9, r));
    await Promise.all(groups.map((g, r) => g.allReduce(bufs[r]!)));
    assert.deepEqual(bits(bufs[0]!), bits(referenceSum([0, 1].map((r) => randomTensor(30_000, 9, r)))));
    const paths = groups.map((g) => g.dataPath);
    await Promise.all(groups.map((g) => g.close()));
    return paths;
  };
  const saved = process.env.CXR_SHM_DISABLE;
  try {
    process.env.CXR_SHM_DISABLE = '1';
    for (const p of await pair()) {
      assert.equal(p.send, 'socket');
      assert.match(p.note!, /shared memory turned off/);
    }
    delete process.env.CXR_SHM_DISABLE;
    for (const p of await pair()) assert.deepEqual([p.send, p.receive], ['shared-memory', 'shared-memory']);
  } finally {
    if (saved === undefined) delete process.env.CXR_SHM_DISABLE;
    else process.env.CXR_SHM_DISABLE = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

const nativeBuilt = shmNative().addon !== null;

test('with the addon built, large fp32 all-reduces go through buffers every rank maps, in the ring order, bit for bit, across rounds and calls', {
  skip: skip || (!nativeBuilt && shmNative().why),
  timeout: 90_000,
}, async () => {
  const shmDir = shmTempDir();
  let during: string[] = ['not checked'];
  // 3 ranks, 3.5M elements: segments of ~1.17M, over the regions' 1M-element blocks, so two rounds
  // per call and three calls: the halves alternate within and across calls. The bf16 one takes the ring.
  const length = 3_500_017;
  const ops: RankOp[] = [
    { kind: 'allReduce', length, seed: 61 },
    { kind: 'allReduce', length: 50_000, seed: 62, wire: 'bf16' },
    { kind: 'allReduce', length, seed: 63 },
    { kind: 'reduceScatter', length: 100_003, seed: 64 },
    { kind: 'allReduce', length: 1_000_003, seed: 65 },
  ];
  const { cluster, results } = await runRanks({
    world: 3,
    ops,
    transport: 'tcp',
    shmDir,
    beforeGo: () => void (during = readdirSync(shmDir)),
  });
  try {
    assert.deepEqual(during, [], 'segment and region names are gone after the handshake');
    for (const res of results) {
      assert.ok(res?.ok, JSON.stringify(res?.errors));
      assert.equal(res.dataPath!.allReduce, 'shared-buffers', JSON.stringify(res.dataPath));
    }
    for (const i of [0, 1, 2, 4]) {
      const want = bits(expectSum(ops[i]!, 3));
      for (let r = 0; r < 3; r++) assert.deepEqual(bits(cluster.output(r, i)), want, `op ${i} rank ${r}`);
    }
  } finally {
    cluster.cleanup();
    rmSync(shmDir, { recursive: true, force: true });
  }
});

test('a rank that stops inside a shared-buffer all-reduce is named within the timeout', {
  skip: skip || (!nativeBuilt && shmNative().why),
  timeout: 60_000,
}, async () => {
  const timeoutMs = 1500;
  const { cluster, results } = await runWithStoppedRank({
    world: 3,
    timeoutMs,
    transport: 'tcp',
    ops: [{ kind: 'allReduce', length: 300_007, seed: 7 }],
    stopped: 2,
  });
  try {
    assertNamedWithin(cluster, results, [0, 1], 2, timeoutMs);
  } finally {
    cluster.cleanup();
  }
});

test('npm install built the shared-memory addon (required in CI, where a compiler is installed)', {
  skip: process.env.CI === 'true' ? false : 'outside CI the addon is optional',
}, () => {
  assert.ok(nativeBuilt, shmNative().why);
});

test('after a failed shared-buffer all-reduce, abort() on every rank makes the next ones exact again', {
  skip: skip || (!nativeBuilt && shmNative().why),
  timeout: 60_000,
}, async () => {
  const length = 2_500_003; // two rounds at 2 ranks (1M-element blocks), so the failure leaves the halves mid-way
  const ops: RankOp[] = [21, 22, 23].map((seed) => ({ kind: 'allReduce' as const, length, seed }));
  // Rank 1's part of the first round's second barrier, claiming another length: a protocol error there (barriers carry the all-reduce's length).
  const { cluster, results } = await runWithForgedMessages({
    ops,
    forge: async (push) => {
      const h = encodeHeader({
        type: MsgType.DATA,
        op: 'barrier',
        wire: 'fp32',
        sender: 1,
        flags: 0,
        generation: 0,
        seq: 1,
        step: 0,
        chunk: 0,
        total: 3,
      });
      await push.send([h, Buffer.alloc(4)]);
    },
  });
  try {
    for (const res of results) {
      assert.ok(res, 'no rank may crash');
      assert.equal(res.dataPath!.allReduce, 'shared-buffers');
      assert.equal(res.errors.length, 1, JSON.stringify(res.errors));
      assert.equal(res.errors[0]!.op, 0);
    }
    assert.match(results[0]!.errors[0]!.message, /runs it on 3 elements, this rank on 2500003/);
    for (const i of [1, 2])
      for (const r of [0, 1]) assert.deepEqual(bits(cluster.output(r, i)), bits(expectSum(ops[i]!, 2)), `op ${i} rank ${r}`);
  } finally {
    cluster.cleanup();
  }
});
