import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import fc from 'fast-check';
import { shardRange } from '../../shared/shard.js';
import { referenceSum } from '../../worker/collectives/index.js';
import { encodeHeader, MsgType } from '../../worker/collectives/protocol.js';
import { randomTensor } from '../fixtures/collective-data.js';
import { assertNamedWithin, runRanks, runWithForgedMessages, runWithStoppedRank } from '../fixtures/collective-cluster.js';
import type { RankOp } from '../fixtures/collective-rank.js';
import type { Wire } from '../../worker/collectives/codec.js';
import { DEFAULT_SHM_DIR, shmDirProblem } from '../../worker/collectives/transport/shm.js';

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** What rank `rank` must hold after `op`, computed sequentially in the documented order. */
function expected(op: RankOp, world: number, rank: number): Float32Array {
  const inputs = (n: number): Float32Array[] => Array.from({ length: world }, (_, r) => randomTensor(n, op.seed, r));
  switch (op.kind) {
    case 'allReduce':
      return referenceSum(inputs(op.length!), op.wire ?? 'fp32');
    case 'reduceScatter': {
      const { start, end } = shardRange(op.length!, world, rank);
      return referenceSum(inputs(op.length!), 'fp32', 'reduceScatter').slice(start, end);
    }
    case 'allGather':
      return Float32Array.from(inputs(op.length!).flatMap((t) => [...t]));
    case 'allGatherV':
    case 'allGatherVSync':
    case 'allGatherVInPlace':
      return Float32Array.from(op.counts!.flatMap((n, r) => [...randomTensor(n, op.seed, r)]));
    case 'broadcast':
      return randomTensor(op.length!, op.seed, op.root!);
    case 'barrier':
      return new Float32Array(0);
  }
}

// The shared-memory path needs a tmpfs /dev/shm; where there is none the groups fall back to the socket.
const shmUsable = shmDirProblem(DEFAULT_SHM_DIR) === null;

const lengthArb = fc.oneof(fc.constantFrom(0, 1, 2, 7, 97, 1009, 4099), fc.nat(3000));

const opArb = (world: number): fc.Arbitrary<RankOp> =>
  fc.oneof(
    fc.record({
      kind: fc.constant('allReduce' as const),
      length: lengthArb,
      wire: fc.constantFrom<Wire>('fp32', 'fp32', 'fp16', 'bf16'),
      seed: fc.nat(1e6),
    }),
    fc.record({ kind: fc.constant('reduceScatter' as const), length: lengthArb, seed: fc.nat(1e6) }),
    fc.record({ kind: fc.constant('allGather' as const), length: fc.nat(300), seed: fc.nat(1e6) }),
    fc.record({
      kind: fc.constant('allGatherV' as const),
      counts: fc.array(fc.nat(500), { minLength: world, maxLength: world }),
      seed: fc.nat(1e6),
    }),
    fc.record({ kind: fc.constant('broadcast' as const), length: lengthArb, root: fc.nat(world - 1), seed: fc.nat(1e6) }),
    fc.record({ kind: fc.constant('barrier' as const), seed: fc.constant(0) }),
  );

test('collectives over real processes and sockets equal the sequential reference, bit for bit, on every rank', {
  timeout: 240_000,
}, async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 8 }).chain((world) =>
        fc.record({
          world: fc.constant(world),
          ops: fc.array(opArb(world), { minLength: 1, maxLength: 6 }),
          transport: fc.constantFrom<'ipc' | 'tcp'>('ipc', 'tcp'),
          // Small chunks, so that a few thousand elements already take many pipelined messages.
          chunkBytes: fc.constantFrom(16, 256, 1000, 4096, 1 << 20),
          // 0: every collective on the ring; otherwise small ones take the one-hop exchange.
          exchangeMaxBytes: fc.constantFrom(0, 0, 4096),
          // Per rank: whether it offers and reads shared memory (a rank without it puts both its
          // ring links on the socket, so mixed rings take both paths in one collective).
          sharedMemory: fc.array(fc.boolean(), { minLength: world, maxLength: world }),
          // Off: large fp32 all-reduces take the ring even when every rank could map the others' buffers.
          sharedBuffers: fc.boolean(),
        }),
      ),
      async ({ world, ops, transport, chunkBytes, exchangeMaxBytes, sharedMemory, sharedBuffers }) => {
        // The shared-memory chunk as small as the socket's, so that these lengths pipeline there too.
        const { cluster, results } = await runRanks({
          world,
          ops,
          transport,
          chunkBytes,
          exchangeMaxBytes,
          sharedMemory,
          sharedBuffers,
          shmChunkBytes: chunkBytes,
        });
        try {
          for (const res of results) assert.ok(res?.ok, `rank ${res?.rank} failed: ${JSON.stringify(res?.errors)}`);
          // Rank r sends through shared memory exactly when it and its successor both have it on.
          if (shmUsable)
            results.forEach((res, r) => {
              const shm = world > 1 && sharedMemory[r]! && sharedMemory[(r + 1) % world]!;
              assert.equal(
                res!.dataPath!.send,
                shm ? 'shared-memory' : 'socket',
                `rank ${r} of ${JSON.stringify(sharedMemory)}: ${res!.dataPath!.note}`,
              );
            });
          ops.forEach((op, i) => {
            for (let r = 0; r < world; r++) {
              const want = expected(op, world, r);
              assert.deepEqual(bits(cluster.output(r, i)), bits(want), `op ${i} (${op.kind}) on rank ${r} of ${world}`);
            }
          });
        } finally {
          cluster.cleanup();
        }
      },
    ),
    { numRuns: 6 },
  );
});

test('a 1 MiB all-reduce over 4 ranks pipelines 64 KiB chunks and matches the reference', { timeout: 60_000 }, async () => {
  const ops: RankOp[] = [
    { kind: 'allReduce', length: 262_147, seed: 5 },
    { kind: 'allReduce', length: 262_147, seed: 6, wire: 'bf16' },
  ];
  const { cluster, results } = await runRanks({ world: 4, ops, chunkBytes: 64 << 10 });
  try {
    for (const res of results) assert.ok(res?.ok, JSON.stringify(res?.errors));
    ops.forEach((op, i) => {
      const want = bits(expected(op, 4, 0));
      for (let r = 0; r < 4; r++) assert.deepEqual(bits(cluster.output(r, i)), want);
    });
  } finally {
    cluster.cleanup();
  }
});

test('a killed peer makes the others fail within the timeout with an error naming it', { timeout: 60_000 }, async () => {
  const timeoutMs = 2000;
  const { cluster, results } = await runRanks({
    world: 3,
    timeoutMs,
    ops: [{ kind: 'allReduce', length: 10_000, seed: 1 }],
    beforeGo: async (c) => {
      c.children[2]!.kill('SIGKILL');
      await new Promise((r) => c.children[2]!.once('exit', r));
    },
  });
  try {
    assert.equal(results[2], null);
    assertNamedWithin(cluster, results, [0, 1], 2, timeoutMs);
  } finally {
    cluster.cleanup();
  }
});

test('a silent (stopped) peer is named in a timeout error instead of hanging the others', { timeout: 60_000 }, async () => {
  const timeoutMs = 1500;
  const { cluster, results } = await runWithStoppedRank({
    world: 3,
    timeoutMs,
    transport: 'tcp',
    ops: [{ kind: 'allReduce', length: 1000, seed: 1 }],
    stopped: 1,
  });
  try {
    assertNamedWithin(cluster, results, [0, 2], 1, timeoutMs);
  } finally {
    cluster.cleanup();
  }
});

test('garbage bytes and foreign messages are dropped without a crash; a malformed message fails the collective and abort() recovers', {
  timeout: 60_000,
}, async () => {
  // Above the one-hop exchange size: on the ring, a failure on one rank stops the others too.
  const length = 20_011;
  const ops: RankOp[] = [
    { kind: 'allReduce', length, seed: 11 },
    { kind: 'allReduce', length, seed: 12 },
    { kind: 'allReduce', length, seed: 13 },
  ];
  const { cluster, results } = await runWithForgedMessages({
    ops,
    // The ring's chunk checks are what this forges against (shared buffers carry no chunks).
    sharedBuffers: false,
    forge: async (push, c) => {
      const port = Number(c.endpoints[0]!.split(':').pop());
      // Raw bytes that are not ZMTP at all, including a huge claimed frame length.
      await new Promise<void>((resolve) => {
        const s = connect(port, '127.0.0.1', () => {
          s.write(Buffer.concat([Buffer.from([0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0]), randomBytes(4096)]));
          s.end();
        });
        // libzmq may hold a half-greeted connection until its handshake interval; don't wait for that.
        const done = (): void => {
          s.destroy();
          resolve();
        };
        setTimeout(done, 300);
        s.on('close', done);
        s.on('error', done);
      });
      // Foreign messages: dropped and counted.
      await push.send(randomBytes(100));
      await push.send([randomBytes(32), randomBytes(10)]);
      // Looks like rank 1's first chunk of the first all-reduce, but 12 bytes long: an error.
      const h = encodeHeader({
        type: MsgType.DATA,
        op: 'allReduce',
        wire: 'fp32',
        sender: 1,
        flags: 0,
        generation: 0,
        seq: 0,
        step: 0,
        chunk: 0,
        total: length,
      });
      await push.send([h, Buffer.alloc(12)]);
    },
  });
  try {
    for (const res of results) {
      assert.ok(res, 'no rank may crash');
      assert.equal(res.errors.length, 1, JSON.stringify(res.errors));
      assert.equal(res.errors[0]!.op, 0);
    }
    assert.equal(results[0]!.errors[0]!.code, 'protocol');
    assert.match(results[0]!.errors[0]!.message, /sent 12 bytes (for|as) step 0 chunk 0, expected \d+/);
    assert.equal(results[1]!.errors[0]!.code, 'peer-failed');
    assert.ok(results[0]!.stats.foreign >= 2, JSON.stringify(results[0]!.stats));
    for (const i of [1, 2])
      for (const r of [0, 1]) assert.deepEqual(bits(cluster.output(r, i)), bits(expected(ops[i]!, 2, r)), `op ${i} rank ${r}`);
  } finally {
    cluster.cleanup();
  }
});

function randomBytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 2654435761) >>> 24;
  return b;
}
