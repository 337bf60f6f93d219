import { test } from 'node:test';
import assert from 'node:assert/strict';
import { shardRange } from '../../shared/shard.js';
import { referenceSum } from '../../worker/collectives/index.js';
import { randomTensor } from '../fixtures/collective-data.js';
import { runRanks } from '../fixtures/collective-cluster.js';
import { DEFAULT_SHM_DIR, shmDirProblem } from '../../worker/collectives/transport/shm.js';
import type { RankOp } from '../fixtures/collective-rank.js';

// The train step's collectives run in a comm thread (worker/collectives/threaded-group.ts) and its
// embedding all-gather blocks the main thread inside the tape: real processes, threads and sockets.

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);
const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

function expected(op: RankOp, world: number, rank: number): Float32Array {
  const inputs = (n: number) => Array.from({ length: world }, (_, r) => randomTensor(n, op.seed, r));
  if (op.kind === 'allReduce') return referenceSum(inputs(op.length!));
  if (op.kind === 'reduceScatter') {
    const { start, end } = shardRange(op.length!, world, rank);
    return referenceSum(inputs(op.length!), 'fp32', 'reduceScatter').slice(start, end);
  }
  return Float32Array.from(op.counts!.flatMap((n, r) => [...randomTensor(n, op.seed, r)]));
}

test("threaded group: blocking all-gathers between asynchronous collectives (in-place all-gather included) give the ProcessGroup's bits, in call order", {
  timeout: 60_000,
}, async () => {
  const ops: RankOp[] = [
    { kind: 'allGatherVSync', counts: [3 * 7, 0, 5 * 7], seed: 1 },
    { kind: 'reduceScatter', length: 300_001, seed: 2 },
    // Large enough for the ring with zero-copy sends and an acknowledgement.
    { kind: 'allGatherVSync', counts: [100_000, 50_001, 3], seed: 3 },
    { kind: 'allReduce', length: 6, seed: 4 },
    { kind: 'allGatherV', counts: [283_334, 283_334, 283_333], seed: 5 },
    { kind: 'allGatherVInPlace', counts: [283_334, 283_334, 283_333], seed: 7 },
    { kind: 'allGatherVInPlace', counts: [5, 0, 2], seed: 8 },
    { kind: 'allGatherVSync', counts: [16 * 270, 16 * 270, 16 * 270], seed: 6 },
  ];
  const { cluster, results } = await runRanks({ world: 3, ops, threaded: true });
  try {
    for (let r = 0; r < 3; r++) {
      assert.deepEqual(results[r]!.errors, [], `rank ${r}`);
      // Ranks on one host find each other's shared memory, also from inside the comm thread.
      if (shmDirProblem(DEFAULT_SHM_DIR) === null)
        assert.equal(results[r]!.dataPath?.send, 'shared-memory', JSON.stringify(results[r]!.dataPath));
      // The process ended on its own (no abort in libzmq's teardown: the thread closed first).
      assert.equal(cluster.children[r]!.exitCode, 0, `rank ${r} exit code`);
      ops.forEach((op, i) => assert.deepEqual(bits(cluster.output(r, i)), bits(expected(op, 3, r)), `rank ${r} op ${i} (${op.kind})`));
    }
  } finally {
    cluster.cleanup();
  }
});

test('threaded group: a peer that dies during the blocking all-gather fails the others with an error naming it, no hang', {
  timeout: 60_000,
}, async () => {
  const timeoutMs = 4000;
  const { cluster, results } = await runRanks({
    world: 3,
    timeoutMs,
    threaded: true,
    ops: [
      { kind: 'allGatherVSync', counts: [4, 4, 4], seed: 1 },
      { kind: 'allGatherVSync', counts: [16 * 270, 16 * 270, 16 * 270], seed: 2, die: { rank: 2, afterMs: 300 } },
    ],
  });
  try {
    assert.equal(results[2], null, 'rank 2 was killed');
    for (const r of [0, 1]) {
      const e = results[r]!.errors[0]!;
      assert.ok(e, `rank ${r} did not fail`);
      // Whichever survivor notices first tells the other, which then names the same peer.
      assert.ok(e.code === 'peer-lost' || e.code === 'peer-failed', `${e.code}: ${e.message}`);
      assert.equal(e.peer, 2, e.message);
      assert.match(e.message, new RegExp(`rank 2 \\(${escapeRe(cluster.endpoints[2]!)}\\)`));
      // It blocked while the peer was alive, then failed once its connection dropped: well within the timeout.
      assert.ok(e.ms >= 250 && e.ms < timeoutMs, `rank ${r} took ${e.ms} ms: ${e.message}`);
      assert.equal(cluster.children[r]!.exitCode, 0, `rank ${r} exit code`);
    }
  } finally {
    cluster.cleanup();
  }
});

test('threaded group: a peer whose main thread never joins the blocking all-gather is named in a timeout error', {
  timeout: 60_000,
}, async () => {
  const timeoutMs = 1500;
  const { cluster, results } = await runRanks({
    world: 2,
    timeoutMs,
    threaded: true,
    // Rank 1's comm thread stays alive (it answers pings), its main thread is busy past the timeout.
    ops: [{ kind: 'allGatherVSync', counts: [100, 100], seed: 1, stall: { rank: 1, ms: timeoutMs + 1500 } }],
  });
  try {
    const e = results[0]!.errors[0]!;
    assert.ok(e, 'rank 0 did not fail');
    assert.equal(e.code, 'timeout', e.message);
    assert.equal(e.peer, 1, e.message);
    assert.match(e.message, new RegExp(`waiting for rank 1 \\(${escapeRe(cluster.endpoints[1]!)}\\)`));
    assert.ok(e.ms >= timeoutMs && e.ms <= timeoutMs + 1000, `rank 0 took ${e.ms} ms: ${e.message}`);
    // The late rank learns that the collective failed instead of waiting for a partner that gave up.
    assert.equal(results[1]!.ok, false);
    assert.match(results[1]!.errors[0]!.message, /failed on rank 0|refused|earlier collective failed/);
    for (const r of [0, 1]) assert.equal(cluster.children[r]!.exitCode, 0, `rank ${r} exit code`);
  } finally {
    cluster.cleanup();
  }
});
