import { test } from 'node:test';
import assert from 'node:assert/strict';
import { adamwStep, clipFactor, decayMask, learningRate, scaleInPlace, sumOfSquares } from '../../worker/steps/adamw.js';
import { withKernelOptions } from '../../kernels/options.js';
import { simdAdamwAvailable } from '../../kernels/simd/adamw.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';
import { buildLayout } from '../../shared/params.js';

test('AdamW matches a float64 reference of torch.optim.AdamW, and a sharded update equals the whole', () => {
  const layout = buildLayout([
    { name: 'w', shape: [3], decay: true },
    { name: 'b', shape: [2], decay: false },
  ]);
  const mask = decayMask(layout);
  assert.deepEqual(Array.from(mask), [1, 1, 1, 0, 0]);
  const hyper = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const p = Float32Array.from([0.5, -1, 2, 0.3, -0.2]);
  const ref = Array.from(p);
  const rm = [0, 0, 0, 0, 0];
  const rv = [0, 0, 0, 0, 0];
  const m = new Float32Array(5);
  const v = new Float32Array(5);
  const shard = Float32Array.from(p);
  const m0 = new Float32Array(2),
    v0 = new Float32Array(2),
    m1 = new Float32Array(3),
    v1 = new Float32Array(3);
  for (let t = 1; t <= 5; t++) {
    const g = Float32Array.from([0.1 * t, -0.2, 0.3, 0.05 * t, -0.4]);
    adamwStep(p, g, m, v, { start: 0, end: 5 }, hyper, t, mask);
    adamwStep(shard, g, m0, v0, { start: 0, end: 2 }, hyper, t, mask);
    adamwStep(shard, g, m1, v1, { start: 2, end: 5 }, hyper, t, mask);
    for (let i = 0; i < 5; i++) {
      if (mask[i]) ref[i]! *= 1 - hyper.lr * hyper.weightDecay;
      rm[i] = 0.9 * rm[i]! + 0.1 * g[i]!;
      rv[i] = 0.999 * rv[i]! + 0.001 * g[i]! ** 2;
      const mh = rm[i]! / (1 - 0.9 ** t);
      const vh = rv[i]! / (1 - 0.999 ** t);
      ref[i]! -= (hyper.lr * mh) / (Math.sqrt(vh) + hyper.eps);
    }
  }
  for (let i = 0; i < 5; i++) assert.ok(Math.abs(p[i]! - ref[i]!) < 1e-6, `param ${i}: ${p[i]} vs ${ref[i]}`);
  assert.deepEqual(Array.from(shard), Array.from(p));
});

test('warmup-cosine schedule and global-norm clipping', () => {
  const s = { baseLr: 1, warmupSteps: 10, totalSteps: 110, minLrRatio: 0.1 };
  assert.equal(learningRate(s, 1), 0.1);
  assert.equal(learningRate(s, 10), 1);
  assert.ok(Math.abs(learningRate(s, 60) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(s, 110) - 0.1) < 1e-12);
  const g = Float32Array.from([3, 4]);
  const norm = Math.sqrt(sumOfSquares(g));
  assert.equal(norm, 5);
  scaleInPlace(g, clipFactor(norm, 1));
  assert.ok(Math.abs(Math.hypot(g[0]!, g[1]!) - 1) < 1e-6);
  assert.equal(clipFactor(0.5, 1), 1);
  assert.equal(clipFactor(10, 0), 1);
});

test("AdamW on the SIMD kernel gives the JavaScript loop's bits: odd lengths, shards, decay runs, a clipping scale, several steps", () => {
  assert.ok(simdAdamwAvailable, 'wasm SIMD is available on Node 20');
  const r = mulberry32(11);
  const normal = normalSource(r);
  // Runs of decay and no decay, lengths around the kernel's piece of 4096 and its pairs.
  const sizes = [1, 2, 3, 4095, 4096, 4097, 9001, 5];
  const layout = buildLayout(sizes.map((n, i) => ({ name: `t${i}`, shape: [n], decay: i % 2 === 0 })));
  const mask = decayMask(layout);
  const n = layout.total;
  const hyper = { lr: 3e-3, beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.05 };
  const grads = Float32Array.from({ length: n }, (_, i) => (i % 97 === 0 ? 0 : normal() * 10 ** Math.floor(r() * 8 - 5)));
  const start = Float32Array.from({ length: n }, () => normal());
  const run = (simd: boolean, range: { start: number; end: number }, scale: number) =>
    withKernelOptions({ adamw: simd }, () => {
      const p = Float32Array.from(start);
      const m = new Float32Array(range.end - range.start);
      const v = new Float32Array(range.end - range.start);
      for (let t = 1; t <= 3; t++) adamwStep(p, grads, m, v, range, { ...hyper, lr: hyper.lr * t }, t, mask, t === 2 ? scale : 1);
      return [p, m, v].map((x) => Buffer.from(x.buffer).toString('hex'));
    });
  const before = Float32Array.from(grads);
  for (const range of [
    { start: 0, end: n },
    { start: 3, end: 8200 },
    { start: 4097, end: n - 1 },
  ]) {
    for (const scale of [1, 0.37])
      assert.deepEqual(run(true, range, scale), run(false, range, scale), `range ${range.start}-${range.end}, scale ${scale}`);
  }
  assert.deepEqual(grads, before, 'the gradient is left as it was');
  // The scale is the clipping pass's: the same as scaleInPlace on a copy, then no scale.
  const [p1, p2] = [Float32Array.from(start), Float32Array.from(start)];
  withKernelOptions({ adamw: false }, () => {
    const scaled = Float32Array.from(grads);
    scaleInPlace(scaled, 0.37);
    adamwStep(p1, grads, new Float32Array(n), new Float32Array(n), { start: 0, end: n }, hyper, 1, mask, 0.37);
    adamwStep(p2, scaled, new Float32Array(n), new Float32Array(n), { start: 0, end: n }, hyper, 1, mask);
  });
  assert.deepEqual(p1, p2);
});
