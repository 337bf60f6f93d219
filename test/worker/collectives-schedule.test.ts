import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { shardRange, shardRanges } from '../../shared/shard.js';
import {
  type Wire,
  encode,
  decodeAdd,
  decodeCopy,
  quantize,
  f32BitsToF16,
  f16ToF32,
  f32BitsToBf16,
} from '../../worker/collectives/codec.js';
import {
  type Plan,
  ringPlan,
  broadcastPlan,
  chunkRanges,
  segmentsFromCounts,
  reductionOrder,
  referenceSum,
  sendSegment,
  recvSegment,
} from '../../worker/collectives/algorithms/schedule.js';
import { packBuckets, flattenInto, unflattenFrom } from '../../worker/collectives/buckets.js';
import { decodeMessage, encodeHeader, ForeignMessage, ProtocolError, MsgType, FLAG_SHM } from '../../worker/collectives/protocol.js';
import { encodeDescriptor, encodeRelease } from '../../worker/collectives/transport/shm.js';
import { randomTensor } from '../fixtures/collective-data.js';
import { addF32, addF32From, addF32Loop, simdAddAvailable } from '../../kernels/simd/add.js';

/**
 * Runs the plans of all ranks in memory with the arithmetic of the process group (FIFO per link,
 * add/copy/forward, the owner's rounding of a compressed all-reduce), no sockets.
 */
function simulate(plans: Plan[], bufs: Float32Array[], wire: Wire, kind: string): void {
  const world = plans.length;
  const inbox: { step: number; chunk: number; payload: Buffer }[][] = plans.map(() => []);
  const next = plans.map(() => 0);
  const send = (r: number, step: number, chunk: number, start: number, end: number, forward: Buffer | null): void => {
    let payload = forward;
    if (!payload) {
      const view = bufs[r]!.subarray(start, end);
      if (kind === 'allReduce' && step === world - 1) quantize(view, wire);
      payload = encode(view, wire);
    }
    inbox[plans[r]!.to]!.push({ step, chunk, payload });
  };
  plans.forEach((p, r) => p.sends.forEach((s) => send(r, s.step, s.chunk, s.start, s.end, null)));
  for (let progress = true; progress; ) {
    progress = false;
    for (let r = 0; r < world; r++) {
      const m = inbox[r]!.shift();
      if (!m) continue;
      progress = true;
      const e = plans[r]!.recvs[next[r]!++]!;
      assert.ok(e, `rank ${r} got an unexpected message`);
      assert.deepEqual([m.step, m.chunk], [e.step, e.chunk], `rank ${r} message order`);
      const dst = bufs[r]!.subarray(e.start, e.end);
      if (e.mode === 'add') decodeAdd(dst, m.payload, wire);
      else decodeCopy(dst, m.payload, wire);
      if (e.forward) send(r, e.step + 1, e.chunk, e.start, e.end, e.mode === 'copy' ? m.payload : null);
    }
  }
  plans.forEach((p, r) => assert.equal(next[r], p.recvs.length, `rank ${r} missed messages`));
}

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

test('ring all-reduce plans give every rank the reference sum bit for bit', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.nat(300),
      fc.integer({ min: 1, max: 40 }),
      fc.constantFrom<Wire>('fp32', 'fp16', 'bf16'),
      fc.nat(1000),
      (world, length, chunkElems, wire, seed) => {
        const inputs = Array.from({ length: world }, (_, r) => randomTensor(length, seed, r));
        const bufs = inputs.map((x) => x.slice());
        const plans = bufs.map((_, r) => ringPlan('allReduce', world, r, shardRanges(length, world), chunkElems));
        simulate(plans, bufs, wire, 'allReduce');
        const want = bits(referenceSum(inputs, wire));
        bufs.forEach((b) => assert.deepEqual(bits(b), want));
      },
    ),
    { numRuns: 300 },
  );
});

test('reduce-scatter plans leave each rank its shard of the reference sum', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.nat(200),
      fc.integer({ min: 1, max: 17 }),
      fc.constantFrom<Wire>('fp32', 'bf16'),
      (world, length, chunkElems, wire) => {
        const inputs = Array.from({ length: world }, (_, r) => randomTensor(length, 7, r));
        const bufs = inputs.map((x) => x.slice());
        const plans = bufs.map((_, r) => ringPlan('reduceScatter', world, r, shardRanges(length, world), chunkElems));
        simulate(plans, bufs, wire, 'reduceScatter');
        const want = referenceSum(inputs, wire, 'reduceScatter');
        bufs.forEach((b, r) => {
          const { start, end } = shardRange(length, world, r);
          assert.deepEqual(bits(b.subarray(start, end)), bits(want.subarray(start, end)));
        });
      },
    ),
    { numRuns: 200 },
  );
});

test('all-gather plans with unequal counts and broadcast chains deliver every part in rank order', () => {
  fc.assert(
    fc.property(fc.array(fc.nat(30), { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 9 }), (counts, chunkElems) => {
      const world = counts.length;
      const segs = segmentsFromCounts(counts);
      const total = segs[world - 1]!.end;
      const want = randomTensor(total, 3, 0);
      const bufs = segs.map((s) => {
        const b = new Float32Array(total);
        b.set(want.subarray(s.start, s.end), s.start);
        return b;
      });
      simulate(
        bufs.map((_, r) => ringPlan('allGather', world, r, segs, chunkElems)),
        bufs,
        'fp32',
        'allGather',
      );
      bufs.forEach((b) => assert.deepEqual(b, want));
      const root = total % world;
      const bc = bufs.map((_, r) => (r === root ? want.slice() : new Float32Array(total)));
      simulate(
        bc.map((_, r) => broadcastPlan(world, r, root, total, chunkElems)),
        bc,
        'fp32',
        'broadcast',
      );
      bc.forEach((b) => assert.deepEqual(b, want));
    }),
    { numRuns: 200 },
  );
});

test('the ring reduces segment k in the order k+1, ..., N-1, 0, ..., k and sends what it received one step before', () => {
  assert.deepEqual(reductionOrder(4, 1), [2, 3, 0, 1]);
  assert.deepEqual(reductionOrder(4, 3), [0, 1, 2, 3]);
  assert.deepEqual(reductionOrder(1, 0), [0]);
  for (let world = 2; world <= 8; world++)
    for (let r = 0; r < world; r++)
      for (let g = 0; g < 2 * world - 3; g++) assert.equal(sendSegment(world, r, g + 1), recvSegment(world, r, g));
  // A concrete case where the order matters in fp32: (1e8 + 1) - 1e8 + 1 depends on association.
  const inputs = [new Float32Array([1]), new Float32Array([1e8]), new Float32Array([-1e8])];
  // length 1: segment 0 holds the element, summed as rank 1, 2, 0: (1e8 + -1e8) + 1 = 1.
  assert.deepEqual(referenceSum(inputs), new Float32Array([1]));
});

test('chunks cover a segment in order, none longer than asked, empty segments have none', () => {
  assert.deepEqual(chunkRanges({ start: 10, end: 10 }, 4), []);
  assert.deepEqual(chunkRanges({ start: 3, end: 10 }, 4), [
    { start: 3, end: 7 },
    { start: 7, end: 10 },
  ]);
  fc.assert(
    fc.property(fc.nat(10_000), fc.nat(1000), fc.integer({ min: 1, max: 3000 }), (start, len, ce) => {
      const cs = chunkRanges({ start, end: start + len }, ce);
      let at = start;
      for (const c of cs) {
        assert.equal(c.start, at);
        assert.ok(c.end > c.start && c.end - c.start <= ce);
        at = c.end;
      }
      assert.equal(at, start + len);
    }),
  );
});

test('fp16 encoding rounds to the nearest value, ties to even, and round-trips every fp16 value', () => {
  for (let h = 0; h < 65536; h++) {
    const v = f16ToF32(h);
    if (Number.isNaN(v)) continue;
    const b = new Uint32Array(new Float32Array([v]).buffer)[0]!;
    assert.equal(f32BitsToF16(b), h, `fp16 pattern ${h.toString(16)}`);
  }
  fc.assert(
    fc.property(fc.float({ noNaN: true }), (x) => {
      const f = Math.fround(x);
      const b = new Uint32Array(new Float32Array([f]).buffer)[0]!;
      const h = f32BitsToF16(b);
      const got = f16ToF32(h);
      if (Math.abs(f) >= 65520) return assert.equal(got, Math.sign(f) * Infinity);
      // No fp16 value is strictly closer; on a tie the even pattern wins.
      for (const n of [h - 1, h + 1]) {
        if ((n & 0x7c00) === 0x7c00 || n < 0 || ((n ^ h) & 0x8000) !== 0) continue;
        const d0 = Math.abs(got - f);
        const d1 = Math.abs(f16ToF32(n) - f);
        assert.ok(d0 < d1 || (d0 === d1 && (h & 1) === 0), `${f}: ${got} vs ${f16ToF32(n)}`);
      }
    }),
    { numRuns: 2000 },
  );
  assert.equal(f16ToF32(f32BitsToF16(new Uint32Array(new Float32Array([NaN]).buffer)[0]!)), NaN);
});

test('bf16 encoding keeps the top 16 bits rounded to nearest even', () => {
  const enc = (x: number): number => f32BitsToBf16(new Uint32Array(new Float32Array([x]).buffer)[0]!);
  assert.equal(enc(1), 0x3f80);
  assert.equal(enc(-2), 0xc000);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to the even pattern (1).
  assert.equal(enc(1 + 2 ** -8), 0x3f80);
  assert.equal(enc(1 + 3 * 2 ** -8), 0x3f82);
  assert.equal(enc(3.4028234663852886e38), 0x7f80); // rounds up to infinity
  assert.ok((enc(NaN) & 0x7fc0) === 0x7fc0);
  const x = randomTensor(1000, 1, 1);
  const q = x.slice();
  quantize(q, 'bf16');
  const back = new Float32Array(1000);
  decodeCopy(back, encode(x, 'bf16'), 'bf16');
  assert.deepEqual(back, q);
});

test('the SIMD add equals the fp32 loop bit for bit at any length and source alignment, infinities and subnormals included', () => {
  assert.ok(simdAddAvailable, 'Node 20 runs WebAssembly SIMD; without it the loop would silently run instead');
  const special = new Float32Array([Infinity, -Infinity, 1e-45, -1e-45, 3.4028234663852886e38, -0, 0, 1.1754942e-38]);
  // Lengths around the 4-lane vectors and the 256 KiB pieces the kernel copies through.
  for (const n of [0, 1, 3, 4, 5, 7, 8, 1023, 65535, 65536, 65537, 65536 * 2 + 3]) {
    for (const offset of [0, 1, 2, 3]) {
      const a = randomTensor(n, n, 0);
      const b = randomTensor(n, n, 1);
      for (let i = 0; i < Math.min(n, special.length); i++) {
        a[n - 1 - i] = special[i]!;
        b[i] = special[(i + 3) % special.length]!;
      }
      const want = a.slice();
      addF32Loop(want, b);
      const raw = Buffer.alloc(n * 4 + offset);
      raw.set(new Uint8Array(b.buffer), offset);
      const got = a.slice();
      addF32(got, raw.subarray(offset));
      assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(want.buffer), `length ${n}, source offset ${offset}`);
      // The shared-memory path fills the kernel's memory piece by piece from the segment.
      const filled = a.slice();
      const src = raw.subarray(offset);
      addF32From(filled, (into, at) => into.set(src.subarray(at, at + into.length)));
      assert.deepEqual(new Uint32Array(filled.buffer), new Uint32Array(want.buffer), `addF32From, length ${n}`);
    }
  }
  assert.throws(() => addF32(new Float32Array(2), new Uint8Array(4)), /4 source bytes for 2 elements/);
});

test('headers round-trip; foreign and malformed messages are told apart', () => {
  const h = {
    type: MsgType.DATA,
    op: 'allReduce' as const,
    wire: 'fp16' as const,
    sender: 2,
    flags: 1,
    generation: 7,
    seq: 9,
    step: 3,
    chunk: 4,
    total: 99,
  };
  const m = decodeMessage([encodeHeader(h), Buffer.alloc(8)], 4, 0);
  assert.deepEqual(m.header, h);
  assert.throws(() => decodeMessage([Buffer.from('hello')], 4, 0), ForeignMessage);
  assert.throws(() => decodeMessage([Buffer.alloc(32), Buffer.alloc(0)], 4, 0), ForeignMessage);
  assert.throws(() => decodeMessage([encodeHeader({ ...h, sender: 5 }), Buffer.alloc(8)], 4, 0), /sender rank 5 outside 0..3/);
  assert.throws(() => decodeMessage([encodeHeader(h), Buffer.alloc(7)], 4, 0), ProtocolError);
  assert.throws(() => decodeMessage([encodeHeader({ ...h, sender: 0 }), Buffer.alloc(8)], 4, 0), /claims to come from this rank/);
  // Shared-memory data carries a 12-byte descriptor; a release exactly 8 bytes.
  const shm = { ...h, flags: FLAG_SHM };
  assert.deepEqual(decodeMessage([encodeHeader(shm), encodeDescriptor(3, 4096)], 4, 0).header, shm);
  assert.throws(() => decodeMessage([encodeHeader(shm), Buffer.alloc(8)], 4, 0), /descriptor of 8 bytes, expected 12/);
  const rel = { ...h, type: MsgType.RELEASE, flags: 0 };
  assert.equal(decodeMessage([encodeHeader(rel), encodeRelease(4)], 4, 0).header.type, MsgType.RELEASE);
  assert.throws(() => decodeMessage([encodeHeader(rel), Buffer.alloc(4)], 4, 0), /release from rank 2 carries 4 bytes/);
});

test('buckets group consecutive tensors up to the size limit and round-trip', () => {
  assert.deepEqual(packBuckets([3, 4, 10, 1, 1], 8), [
    { first: 0, end: 2, offset: 0, length: 7 },
    { first: 2, end: 3, offset: 7, length: 10 },
    { first: 3, end: 5, offset: 17, length: 2 },
  ]);
  assert.deepEqual(packBuckets([], 8), []);
  const ts = [new Float32Array([1, 2, 3]), new Float32Array([4]), new Float32Array([5, 6])];
  const [b] = packBuckets(
    ts.map((t) => t.length),
    100,
  );
  const flat = flattenInto(ts, b!);
  assert.deepEqual(flat, new Float32Array([1, 2, 3, 4, 5, 6]));
  flat.fill(0);
  unflattenFrom(flat, ts, b!);
  assert.deepEqual(ts[2], new Float32Array([0, 0]));
});
