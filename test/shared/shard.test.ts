import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { shardRange, shardRanges } from '../../shared/shard.js';
import { buildLayout, layoutMismatch } from '../../shared/params.js';

test('shard ranges tile [0, length) in rank order with sizes differing by at most one', () => {
  fc.assert(
    fc.property(fc.nat(10_000), fc.integer({ min: 1, max: 64 }), (length, world) => {
      const rs = shardRanges(length, world);
      let at = 0;
      for (const r of rs) {
        assert.equal(r.start, at);
        at = r.end;
      }
      assert.equal(at, length);
      const sizes = rs.map((r) => r.end - r.start);
      assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1);
    }),
  );
  assert.deepEqual(shardRange(10, 3, 0), { start: 0, end: 4 });
  assert.deepEqual(shardRange(10, 3, 2), { start: 7, end: 10 });
  assert.throws(() => shardRange(10, 3, 3), RangeError);
});

test('layouts: offsets are cumulative and mismatches name the parameter', () => {
  const a = buildLayout([
    { name: 'w', shape: [2, 3], decay: true },
    { name: 'b', shape: [3], decay: false },
  ]);
  assert.equal(a.total, 9);
  assert.equal(a.entries[1]!.offset, 6);
  assert.equal(layoutMismatch(a, a), null);
  const b = buildLayout([
    { name: 'w', shape: [2, 4], decay: true },
    { name: 'b', shape: [3], decay: false },
  ]);
  assert.match(layoutMismatch(a, b)!, /'w' has shape \[2,4\], expected \[2,3\]/);
});
