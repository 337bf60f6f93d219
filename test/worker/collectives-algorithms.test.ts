import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { shardRanges } from '../../shared/shard.js';
import { referenceSum, segmentsFromCounts } from '../../worker/collectives/algorithms/schedule.js';
import { barrierExchange, gatherExchange, partProblem, partValues, sumExchange } from '../../worker/collectives/algorithms/exchange.js';
import { blockOf, sharedAllReduce, sharedRounds } from '../../worker/collectives/algorithms/shared-buffers.js';
import { PeerLiveness } from '../../worker/collectives/liveness.js';
import { ShmLink } from '../../worker/collectives/transport/shm-link.js';
import { DEFAULT_SHM_DIR, shmDirProblem, shmSlots } from '../../worker/collectives/transport/shm.js';
import { encodeHeader, FLAG_SHM, MsgType, type Header } from '../../worker/collectives/protocol.js';
import { randomTensor } from '../fixtures/collective-data.js';

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

test('the one-hop exchange combines the parts in the ring order: all-reduce, reduce-scatter and gather', () => {
  for (const world of [2, 3, 5])
    for (const length of [0, 1, 7, 1000]) {
      const inputs = Array.from({ length: world }, (_, r) => randomTensor(length, 40 + length, r));
      for (const kind of ['allReduce', 'reduceScatter'] as const) {
        const buf = inputs[1]!.slice();
        const ex = sumExchange(buf, kind);
        assert.deepEqual(ex.contrib(0), { start: 0, end: length });
        ex.finish(inputs.map((x) => x.slice()));
        assert.deepEqual(bits(buf), bits(referenceSum(inputs, 'fp32', kind)), `${kind} world ${world} length ${length}`);
      }
      const counts = Array.from({ length: world }, (_, r) => (length + r) % 4);
      const segs = segmentsFromCounts(counts);
      const parts = counts.map((n, r) => randomTensor(n, 7, r));
      const rank = world - 1;
      const out = new Float32Array(counts.reduce((a, b) => a + b, 0));
      out.set(parts[rank]!, segs[rank]!.start);
      const ex = gatherExchange(out, segs, rank);
      parts.forEach((_, r) => assert.deepEqual(ex.contrib(r), segs[r]));
      ex.finish(parts.map((p, r) => (r === rank ? new Float32Array(p.length).fill(Number.NaN) : p)));
      const want = new Float32Array(out.length);
      parts.forEach((p, r) => want.set(p, segs[r]!.start));
      assert.deepEqual(bits(out), bits(want), 'the own part is kept, not overwritten from the parts');
    }
  assert.deepEqual(barrierExchange.contrib(3), { start: 3, end: 4 });
});

test("a part that does not fit the exchange is named for what differs; a good one's bytes are copied from any offset", () => {
  const op = { kind: 'allReduce', total: 10, wire: 'fp32' };
  const h = { op: 'allReduce', sender: 2, total: 10, wire: 'fp32', step: 0, chunk: 0 };
  assert.equal(partProblem(h, op, 40, 40, false), null);
  assert.match(partProblem({ ...h, op: 'allGather' }, op, 40, 40, false)!, /rank 2 sent data of allGather, this rank is running allReduce/);
  assert.match(partProblem({ ...h, total: 11 }, op, 40, 40, false)!, /rank 2 runs it on 11 elements, this rank on 10/);
  assert.match(partProblem({ ...h, wire: 'bf16' }, op, 40, 40, false)!, /rank 2 sends bf16, this rank expects fp32/);
  assert.match(partProblem(h, op, 40, 40, true)!, /rank 2 sent its part twice/);
  assert.match(partProblem(h, op, 40, 36, false)!, /rank 2 sent 36 bytes as step 0 chunk 0, expected 40 bytes/);
  assert.match(partProblem({ ...h, chunk: 1 }, op, 40, 40, false)!, /as step 0 chunk 1/);
  const values = Float32Array.from([1.5, -2, 3e-40]);
  const frame = Buffer.alloc(13);
  Buffer.from(values.buffer).copy(frame, 1);
  assert.deepEqual(bits(partValues(frame.subarray(1), 3)), bits(values));
});

test('shared-buffer blocks cover every segment in order, one round per block of the longest segment', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 5000 }),
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 1, max: 700 }),
      (length, world, block) => {
        const segs = shardRanges(length, world);
        const rounds = sharedRounds(segs, block);
        assert.equal(rounds, Math.ceil((segs[0]!.end - segs[0]!.start) / block));
        for (let k = 0; k < world; k++) {
          let at = segs[k]!.start;
          for (let r = 0; r < rounds; r++) {
            const b = blockOf(segs, block, k, r);
            assert.ok(b.end - b.start <= block);
            if (b.end > b.start) assert.equal(b.start, at, `segment ${k} round ${r} starts where the last block ended`);
            at = Math.max(at, b.end);
          }
          assert.equal(at, segs[k]!.end, `segment ${k} fully covered`);
        }
      },
    ),
  );
});

/** N ranks of the shared-buffer all-reduce in one thread: plain arrays for regions, a counting barrier. */
async function runShared(inputs: Float32Array[], blockElems: number, calls: number): Promise<Float32Array[]> {
  const world = inputs.length;
  const regions = inputs.map(() => new Float32Array(2 * (world + 1) * blockElems));
  const waiting = new Map<string, { count: number; release: (() => void)[] }>();
  const barrier = (key: string): Promise<void> =>
    new Promise((resolve) => {
      const w = waiting.get(key) ?? { count: 0, release: [] };
      waiting.set(key, w);
      w.release.push(resolve);
      if (++w.count === world) for (const r of w.release) r();
    });
  const rounds = inputs.map(() => 0);
  const bufs = inputs.map((x) => x.slice());
  for (let call = 0; call < calls; call++) {
    const segs = shardRanges(inputs[0]!.length, world);
    await Promise.all(
      bufs.map((buf, rank) =>
        sharedAllReduce(buf, segs, {
          rank,
          world,
          blockElems,
          regions,
          sum: (dst, xs) => {
            for (let i = 0; i < dst.length; i++) {
              let acc = xs[0]![i]!;
              for (let j = 1; j < xs.length; j++) acc = Math.fround(acc + xs[j]![i]!);
              dst[i] = acc;
            }
          },
          live: () => true,
          nextRound: () => rounds[rank]!++,
          barrier: (i) => barrier(`${call}/${i}`),
        }),
      ),
    );
    if (call + 1 < calls) bufs.forEach((b, r) => b.set(inputs[r]!));
  }
  return bufs;
}

test('the shared-buffer all-reduce gives every rank the reference sum bit for bit, over many rounds and calls', async () => {
  for (const [world, length, block] of [
    [2, 1, 4],
    [2, 1001, 16],
    [3, 100, 7],
    [4, 999, 32],
    [5, 13, 1024],
  ] as const) {
    const inputs = Array.from({ length: world }, (_, r) => randomTensor(length, 50 + world, r));
    const want = bits(referenceSum(inputs));
    const got = await runShared(inputs, block, 3);
    got.forEach((g, r) => assert.deepEqual(bits(g), want, `world ${world} length ${length} block ${block} rank ${r}`));
  }
});

test("a shared-buffer all-reduce the group can no longer run fails at its next barrier, with the barrier's reason", async () => {
  const asked: number[] = [];
  await assert.rejects(
    sharedAllReduce(new Float32Array(10), shardRanges(10, 2), {
      rank: 0,
      world: 2,
      blockElems: 4,
      regions: [new Float32Array(24), new Float32Array(24)],
      sum: () => assert.fail('nothing is summed'),
      live: () => false,
      nextRound: () => assert.fail('no round starts'),
      barrier: (i) => {
        asked.push(i);
        return Promise.reject(new Error('aborted'));
      },
    }),
    /aborted/,
  );
  assert.deepEqual(asked, [0]);
});

test('liveness blames the peer silent the longest beyond half the timeout, and prefers a dropped connection', () => {
  const endpoints = ['tcp://a:1', 'tcp://b:1', 'tcp://c:1', 'tcp://d:1'];
  const l = new PeerLiveness(0, endpoints, 1000, 0);
  l.heard(1, 900);
  l.heard(2, 100);
  l.heard(3, 600);
  assert.deepEqual(l.silentPeer(1000, new Set()), { rank: 2, ms: 900 });
  assert.deepEqual(l.silentPeer(1000, new Set([2])), null, 'rank 3 has been silent for 400 ms only, under half the timeout');
  assert.deepEqual(l.silentPeer(1200, new Set([2])), { rank: 3, ms: 600 });
  assert.equal(l.suspect(1), 1);
  assert.equal(l.downNote(1000), '');
  l.lost(3, 700);
  assert.equal(l.suspect(1), 3);
  assert.equal(l.suspect(3), 3);
  assert.equal(l.lostAt(3), 700);
  assert.equal(l.downNote(1000), '; connection lost to rank 3 (tcp://d:1) 300 ms ago');
  l.connected(3);
  assert.equal(l.lostAt(3), undefined);
  assert.equal(l.suspect(1), 1);
});

const noShm = shmDirProblem(DEFAULT_SHM_DIR) ?? false;

test('a shared-memory link carries chunks in slot order, batches its releases, and never writes a settled collective', {
  skip: noShm,
}, () => {
  const dir = mkdtempSync(path.join(DEFAULT_SHM_DIR, 'cxr-shm-link-'));
  const wire: { to: number; header: Buffer; body: Buffer; op: { settled: boolean } | null }[] = [];
  const link = (rank: number): ShmLink<{ settled: boolean }> =>
    new ShmLink(rank, 2, {
      data: (op, header, body) => wire.push({ to: 1 - rank, header, body, op }),
      release: (to, body) => wire.push({ to, header: Buffer.alloc(0), body, op: null }),
    });
  const [w, r] = [link(0), link(1)];
  try {
    w.create(dir, 64, null);
    assert.equal(r.open(w.offer(), null), null);
    assert.equal(w.settle({ shm: true }), null);
    assert.ok(w.sending && r.receiving && !w.receiving && !r.sending);
    const header = (chunk: number): Header => ({
      type: MsgType.DATA,
      op: 'allReduce',
      wire: 'fp32',
      sender: 0,
      flags: FLAG_SHM,
      generation: 0,
      seq: 0,
      step: 0,
      chunk,
      total: 0,
    });
    const live = { settled: false };
    const gone = { settled: true };
    const slots = shmSlots(64);
    // One live send more than there are slots: the last waits for a release.
    for (let c = 0; c <= slots + 1; c++) w.send(c === 1 ? gone : live, encodeHeader(header(c)), Buffer.alloc(16, c));
    assert.equal(wire.length, slots, 'the settled send is dropped, the one past the slots waits');
    const got: number[] = [];
    const sends = wire.splice(0);
    for (const s of sends) {
      const dst = new Uint8Array(16);
      assert.equal(r.take(header(0), s.body, dst), null);
      got.push(dst[0]!);
    }
    assert.deepEqual(got, [0, ...Array.from({ length: slots - 1 }, (_, i) => i + 2)]);
    const releases = wire.splice(0);
    assert.deepEqual(
      releases.map((m) => [m.to, m.body.readUIntLE(0, 6)]),
      [
        [0, slots / 2],
        [0, slots],
      ],
      'a release every half segment',
    );
    assert.equal(w.release(1, releases[1]!.body), null);
    w.pump();
    assert.equal(wire.length, 1, 'the waiting send goes once a slot is free');
    assert.match(w.release(1, releases[0]!.body)!, /does not fit this rank's segment/, 'a release cannot go backwards');
    assert.match(r.take({ ...header(0), sender: 0 }, Buffer.alloc(3), null)!, /unreadable shared-memory descriptor/);
    assert.match(w.take(header(0), wire[0]!.body, null)!, /this rank does not read its segment/);
    const m = r.materialize({ header: header(9), payload: wire[0]!.body });
    assert.ok(typeof m !== 'string');
    assert.equal(m.header.flags & FLAG_SHM, 0);
    assert.deepEqual(
      [...m.payload],
      Array.from({ length: 16 }, () => slots + 1),
    );
  } finally {
    w.close();
    r.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
