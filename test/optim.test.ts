import { test } from 'node:test';
import assert from 'node:assert/strict';
import { adamwStep, clipFactor, decayMask, learningRate, scaleInPlace, sumOfSquares } from '../worker/optim.js';
import { buildLayout } from '../shared/params.js';

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
  const m0 = new Float32Array(2), v0 = new Float32Array(2), m1 = new Float32Array(3), v1 = new Float32Array(3);
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
