import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deriveSeed, hashInts, mulberry32, Prng, Xoshiro128 } from '../../shared/random/generators.js';

// Data order, resume, initialisation and datasets depend on these bits: the values are the
// generators' outputs before they were gathered into one module.
test('every generator keeps its bits', () => {
  const p = new Prng(7);
  assert.deepEqual([p.u32(), p.u32(), p.u32(), new Prng(0xffffffff).u32()], [838155491, 1550620431, 3610122010, 1413747962]);
  const x = new Xoshiro128(5, 3);
  assert.deepEqual([x.next(), x.next(), x.below(1000)], [1106908758, 4110093213, 687]);
  const m = mulberry32(9);
  assert.deepEqual([m(), m()], [0.19872891809791327, 0.8512107962742448]);
  assert.equal(hashInts(1, 2, 3), 3906383291);
  assert.equal(deriveSeed(3, 'split'), 1061468910);
});
