import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AUGMENT_PRESETS, augmentDraw, augmentPolicy, type AugmentDraw, type AugmentPolicy } from '../../shared/augment/policy.js';
import { augmentImages, warpImage } from '../../shared/augment/warp.js';
import { Prng } from '../../shared/random/generators.js';

const still: AugmentPolicy = { scale: [1, 1], ratio: [1, 1], rotate: 0, translate: 0, brightness: 0, contrast: 0, hflip: 0 };
const identity: AugmentDraw = { ax: 1, bx: 0, cx: 0, ay: 0, by: 1, cy: 0, brightness: 1, contrast: 1 };

function randomImage(size: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  return Uint8Array.from({ length: size * size }, () => rng.int(256));
}

test('augment: a draw of nothing returns the image unchanged, bit for bit', () => {
  const img = randomImage(16, 1);
  assert.deepEqual(warpImage(img, 16, identity), img);
  const d = augmentDraw(still, 7, 3, 42, 16);
  assert.deepEqual(warpImage(img, 16, d), img);
});

test('augment: integer shifts, flips and quarter turns move pixels exactly; outside is the nearest edge', () => {
  const s = 8;
  const img = randomImage(s, 2);
  const at = (x: number, y: number) => img[Math.min(s - 1, Math.max(0, y)) * s + Math.min(s - 1, Math.max(0, x))]!;
  const check = (d: Partial<AugmentDraw>, expect: (x: number, y: number) => number) => {
    const out = warpImage(img, s, { ...identity, ...d });
    for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) assert.equal(out[y * s + x], expect(x, y), `(${x}, ${y})`);
  };
  check({ cx: 2 }, (x, y) => at(x + 2, y));
  check({ cy: -3 }, (x, y) => at(x, y - 3));
  check({ ax: -1, cx: s - 1 }, (x, y) => at(s - 1 - x, y));
  // 90 degrees: source x = y, source y = s - 1 - x.
  check({ ax: 0, bx: 1, cx: 0, ay: -1, by: 0, cy: s - 1 }, (x, y) => at(y, s - 1 - x));
});

test('augment: bilinear weights, rounding to nearest and the intensity map', () => {
  // Two columns 0 and 255: half a pixel in between is 127.5, rounded up.
  const img = Uint8Array.from({ length: 4 }, (_, i) => (i % 2 === 0 ? 0 : 255));
  const out = warpImage(img, 2, { ...identity, cx: 0.5 });
  assert.deepEqual(Array.from(out), [128, 255, 128, 255]);
  const q = warpImage(img, 2, { ...identity, cx: 0.25 });
  assert.deepEqual(Array.from(q), [64, 255, 64, 255]); // 63.75
  // Constant image: contrast about the mean changes nothing, brightness scales and clamps.
  const flat = new Uint8Array(9).fill(100);
  assert.deepEqual(Array.from(warpImage(flat, 3, { ...identity, contrast: 1.7, brightness: 1.2 })), new Array(9).fill(120));
  assert.deepEqual(Array.from(warpImage(flat, 3, { ...identity, brightness: 3 })), new Array(9).fill(255));
  // Contrast 0 takes every pixel to the mean.
  const two = Uint8Array.of(0, 200, 0, 200);
  assert.deepEqual(Array.from(warpImage(two, 2, { ...identity, contrast: 0 })), [100, 100, 100, 100]);
});

test('augment: draws depend on (seed, epoch, index) only, not on batch position or slicing', () => {
  const size = 16;
  const n = 12;
  const images = new Uint8Array(n * size * size);
  const rows = Array.from({ length: n }, (_, i) => randomImage(size, 100 + i));
  rows.forEach((r, i) => images.set(r, i * size * size));
  const indices = Array.from({ length: n }, (_, i) => 1000 + 7 * i);
  const policy = AUGMENT_PRESETS.strong;
  const whole = augmentImages(images, n, size, policy, 5, 2, indices);
  // Reversed order, and cut into two slices, as another batch position or worker count would give.
  const order = Array.from({ length: n }, (_, i) => n - 1 - i);
  const rev = new Uint8Array(n * size * size);
  order.forEach((i, k) => rev.set(rows[i]!, k * size * size));
  const revOut = augmentImages(
    rev,
    n,
    size,
    policy,
    5,
    2,
    order.map((i) => indices[i]!),
  );
  const px = size * size;
  order.forEach((i, k) => assert.deepEqual(revOut.subarray(k * px, (k + 1) * px), whole.subarray(i * px, (i + 1) * px)));
  const a = augmentImages(images.subarray(0, 5 * px), 5, size, policy, 5, 2, indices.slice(0, 5));
  const b = augmentImages(images.subarray(5 * px), n - 5, size, policy, 5, 2, indices.slice(5));
  assert.deepEqual([...a, ...b], [...whole]);
  // Another epoch or seed: other draws for every image.
  const nextEpoch = augmentImages(images, n, size, policy, 5, 3, indices);
  const otherSeed = augmentImages(images, n, size, policy, 6, 2, indices);
  for (let i = 0; i < n; i++) {
    assert.notDeepEqual(nextEpoch.subarray(i * px, (i + 1) * px), whole.subarray(i * px, (i + 1) * px));
    assert.notDeepEqual(otherSeed.subarray(i * px, (i + 1) * px), whole.subarray(i * px, (i + 1) * px));
  }
});

test('augment: draws stay inside the policy ranges and the crop inside the image', () => {
  fc.assert(
    fc.property(fc.nat(), fc.nat(1000), fc.nat(100_000), fc.constantFrom('light', 'strong'), (seed, epoch, index, level) => {
      const p = AUGMENT_PRESETS[level as 'light' | 'strong'];
      const size = 64;
      const d = augmentDraw({ ...p, translate: 0, rotate: 0 }, seed, epoch, index, size);
      assert.ok(d.brightness >= 1 - p.brightness && d.brightness <= 1 + p.brightness);
      assert.ok(d.contrast >= 1 - p.contrast && d.contrast <= 1 + p.contrast);
      // No rotation: axis-aligned, scale = crop side, crop within [-0.5, size - 0.5] in pixel units.
      assert.ok(d.bx === 0 && d.ay === 0);
      assert.ok(d.ax > 0 && d.by > 0, 'no flip in the presets');
      const area = d.ax * d.by;
      assert.ok(area >= p.scale[0] - 1e-9 && area <= p.scale[1] + 1e-9, `area ${area}`);
      for (const [x, y] of [
        [-0.5, -0.5],
        [size - 0.5, size - 0.5],
      ] as const) {
        const X = d.ax * x + d.cx;
        const Y = d.by * y + d.cy;
        assert.ok(X >= -0.5 - 1e-9 && X <= size - 0.5 + 1e-9 && Y >= -0.5 - 1e-9 && Y <= size - 0.5 + 1e-9, `corner ${X}, ${Y}`);
      }
    }),
  );
});

test('augment: --augment and --augment-hflip resolve to a policy, or a clear error', () => {
  assert.equal(augmentPolicy('none'), null);
  assert.deepEqual(augmentPolicy('light'), AUGMENT_PRESETS.light);
  assert.equal(augmentPolicy('strong', 0.5)!.hflip, 0.5);
  assert.throws(() => augmentPolicy('heavy'), /--augment 'heavy': expected one of none, light, strong/);
  assert.throws(() => augmentPolicy('none', 0.5), /needs --augment light or strong/);
  assert.throws(() => augmentPolicy('light', 2), /probability/);
  // With flips on, about that share of the draws mirror.
  const p = augmentPolicy('light', 0.5)!;
  const flips = Array.from({ length: 2000 }, (_, i) => augmentDraw(p, 0, 0, i, 32).ax < 0).filter(Boolean).length;
  assert.ok(flips > 900 && flips < 1100, `${flips} flips of 2000`);
});
