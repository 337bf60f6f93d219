import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { buildLayout } from '../../shared/params.js';
import { shardRanges } from '../../shared/shard.js';
import { carryOver, pack, packing, unpack } from '../../shared/trainable.js';

const layout = buildLayout([
  { name: 'a', shape: [3], decay: true },
  { name: 'b', shape: [2, 2], decay: false },
  { name: 'c', shape: [5], decay: true },
  { name: 'd', shape: [], decay: false },
  { name: 'e', shape: [0], decay: true },
  { name: 'f', shape: [2], decay: false },
]);

test('packing: the trainable entries end to end, adjacent ones one run; pack and unpack move only them', () => {
  const p = packing(layout, ['f', 'b']);
  assert.equal(p.total, 15);
  assert.equal(p.size, 9);
  assert.deepEqual(p.runs, [
    { start: 0, end: 3, at: 0 },
    { start: 7, end: 13, at: 3 },
  ]);
  assert.deepEqual(p.frozen, ['b', 'f'], 'in layout order');
  assert.deepEqual(
    p.layout.entries.map((e) => [e.name, e.offset, e.decay]),
    [
      ['a', 0, true],
      ['c', 3, true],
      ['d', 8, false],
      ['e', 9, true],
    ],
  );
  const flat = Float32Array.from({ length: 15 }, (_, i) => i);
  const packed = pack(p, flat);
  assert.deepEqual(Array.from(packed), [0, 1, 2, 7, 8, 9, 10, 11, 12]);
  const back = new Float32Array(15).fill(-1);
  unpack(
    p,
    packed.map((x) => x + 100),
    back,
  );
  assert.deepEqual(Array.from(back), [100, 101, 102, -1, -1, -1, -1, 107, 108, 109, 110, 111, 112, -1, -1]);
  assert.deepEqual(packing(layout, []).runs, [{ start: 0, end: 15, at: 0 }], 'nothing frozen: one run, the identity');
  assert.equal(
    packing(
      layout,
      layout.entries.map((e) => e.name),
    ).size,
    0,
  );
  assert.throws(() => packing(layout, ['zz']), /no parameter 'zz'/);
  assert.throws(() => pack(p, new Float32Array(14)), /pack: 14/);
});

test('carryOver: a packed range of one packing filled from another is the trainable elements both share, zero where the source froze them', () => {
  const names = layout.entries.map((e) => e.name);
  const mask = fc.array(fc.boolean(), { minLength: names.length, maxLength: names.length });
  fc.assert(
    fc.property(mask, mask, fc.integer({ min: 1, max: 5 }), fc.nat(4), (fa, fb, world, r) => {
      const from = packing(
        layout,
        names.filter((_, k) => fa[k]),
      );
      const to = packing(
        layout,
        names.filter((_, k) => fb[k]),
      );
      const range = shardRanges(to.size, world)[r % world]!;
      // Every flat element carries its index + 1; the source's packed vector, the target's range.
      const ids = Float32Array.from({ length: layout.total }, (_, i) => i + 1);
      const src = pack(from, ids);
      const want = pack(to, ids)
        .subarray(range.start, range.end)
        .map((id) => (from.frozen.includes(layout.entries.find((e) => id - 1 >= e.offset && id - 1 < e.offset + e.size)!.name) ? 0 : id));
      const got = new Float32Array(range.end - range.start);
      const pieces = carryOver(from, to, range);
      for (const p of pieces) got.set(src.subarray(p.from, p.from + p.n), p.to);
      assert.deepEqual(got, want);
      for (let k = 1; k < pieces.length; k++) {
        const a = pieces[k - 1]!;
        const b = pieces[k]!;
        assert.ok(b.to >= a.to + a.n, 'in order, not overlapping');
        assert.ok(!(a.from + a.n === b.from && a.to + a.n === b.to), 'adjacent pieces merged');
      }
    }),
  );
  const same = packing(layout, ['b']);
  assert.deepEqual(carryOver(same, same, { start: 2, end: 9 }), [{ from: 2, to: 0, n: 7 }], 'the same packing: one copy of the range');
  const all = packing(layout, []);
  assert.deepEqual(carryOver(all, same, { start: 0, end: 11 }), [
    { from: 0, to: 0, n: 3 },
    { from: 7, to: 3, n: 8 },
  ]);
});
