import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { cosineMatrix, downsampleMinMax, ema, niceTicks, pca2, symmetricEigen } from '../../coordinator/report/math.js';

test('cosine similarity: unit diagonal, symmetric, known angles, zero rows give 0', () => {
  const m = cosineMatrix([
    [1, 0],
    [0, 2],
    [1, 1],
    [0, 0],
  ]);
  assert.equal(m[0]![0], 1);
  assert.equal(m[0]![1], 0);
  assert.ok(Math.abs(m[0]![2]! - Math.SQRT1_2) < 1e-12);
  assert.equal(m[1]![2], m[2]![1]);
  assert.deepEqual(m[3], [0, 0, 0, 0]);
});

test('Jacobi eigen-decomposition: A v = lambda v, orthonormal vectors, descending values', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }),
      fc.array(fc.double({ min: -10, max: 10, noNaN: true }), { minLength: 64, maxLength: 64 }),
      (n, raw) => {
        const A = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => raw[Math.min(i, j) * 8 + Math.max(i, j)]!));
        const { values, vectors } = symmetricEigen(A);
        const scale = Math.max(1, ...A.flat().map(Math.abs));
        for (let i = 0; i < n; i++) {
          if (i > 0) assert.ok(values[i - 1]! >= values[i]!);
          const v = vectors[i]!;
          for (let r = 0; r < n; r++) {
            const av = A[r]!.reduce((s, x, k) => s + x * v[k]!, 0);
            assert.ok(Math.abs(av - values[i]! * v[r]!) < 1e-9 * scale * n, `A v = lambda v, pair ${i}`);
          }
          for (let j = 0; j <= i; j++) {
            const d = v.reduce((s, x, k) => s + x * vectors[j]![k]!, 0);
            assert.ok(Math.abs(d - (i === j ? 1 : 0)) < 1e-9);
          }
        }
      },
    ),
    { numRuns: 100, seed: 11 },
  );
});

test('PCA matches the exact eigenvectors of the covariance (Jacobi reference)', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 3, max: 7 }),
      fc.array(fc.array(fc.double({ min: -5, max: 5, noNaN: true }), { minLength: 7, maxLength: 7 }), { minLength: 12, maxLength: 40 }),
      (d, raw) => {
        // Stretch the axes so the top two eigenvalues are well separated (unique directions).
        const rows = raw.map((r) => r.slice(0, d).map((x, k) => x * (k === 0 ? 6 : k === 1 ? 3 : 1)));
        const n = rows.length;
        const mean = Array.from({ length: d }, (_, k) => rows.reduce((s, r) => s + r[k]!, 0) / n);
        const C = Array.from({ length: d }, (_, i) =>
          Array.from({ length: d }, (_, j) => rows.reduce((s, r) => s + (r[i]! - mean[i]!) * (r[j]! - mean[j]!), 0)),
        );
        const { values, vectors } = symmetricEigen(C);
        fc.pre(values[0]! - values[1]! > 1e-3 * values[0]! && values[1]! - (values[2] ?? 0) > 1e-3 * values[0]!);
        const { points, explained } = pca2(rows, 5000, 1e-15);
        const total = values.reduce((s, x) => s + x, 0);
        assert.ok(Math.abs(explained[0] - values[0]! / total) < 1e-6, `explained ${explained[0]} vs ${values[0]! / total}`);
        assert.ok(Math.abs(explained[1] - values[1]! / total) < 1e-6);
        for (let c = 0; c < 2; c++) {
          const ref = rows.map((r) => r.reduce((s, x, k) => s + (x - mean[k]!) * vectors[c]![k]!, 0));
          const sign = Math.sign(ref.reduce((s, x, i) => s + x * points[i]![c]!, 0)) || 1;
          const scale = Math.max(1, ...ref.map(Math.abs));
          ref.forEach((x, i) => assert.ok(Math.abs(sign * x - points[i]![c]!) < 1e-5 * scale, `component ${c} point ${i}`));
        }
      },
    ),
    { numRuns: 60, seed: 7 },
  );
});

test('PCA recovers a planted 2-D structure and is deterministic', () => {
  const rows: number[][] = [];
  for (let i = 0; i < 50; i++) {
    const u = Math.cos(i) * 10,
      v = Math.sin(i * 1.7) * 3;
    rows.push([u, v, 0.001 * Math.sin(i * 13), u, -v].map((x) => x + 1));
  }
  const a = pca2(rows),
    b = pca2(rows);
  assert.deepEqual(a, b);
  assert.ok(a.explained[0] + a.explained[1] > 0.999999);
  assert.ok(a.explained[0] > a.explained[1]);
  // Degenerate inputs do not blow up.
  assert.deepEqual(pca2([]).points, []);
  const same = pca2([
    [1, 2],
    [1, 2],
    [1, 2],
  ]);
  assert.deepEqual(same.explained, [0, 0]);
  assert.ok(same.points.every((p) => p.every(Number.isFinite)));
});

test('min-max downsampling keeps every spike and both ends, drops non-finite values', () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -1e3, max: 1e3, noNaN: true }), { minLength: 1, maxLength: 3000 }),
      fc.integer({ min: 1, max: 50 }),
      (ys, buckets) => {
        const xs = ys.map((_, i) => i);
        const out = downsampleMinMax(xs, ys, buckets);
        assert.ok(out.length <= Math.max(ys.length, buckets * 4));
        const outYs = out.map((p) => p[1]);
        assert.equal(Math.max(...outYs), Math.max(...ys));
        assert.equal(Math.min(...outYs), Math.min(...ys));
        assert.deepEqual(out[0], [0, ys[0]]);
        assert.deepEqual(out[out.length - 1], [ys.length - 1, ys[ys.length - 1]]);
        for (let i = 1; i < out.length; i++) assert.ok(out[i]![0] > out[i - 1]![0], 'x strictly increasing');
      },
    ),
    { numRuns: 100, seed: 3 },
  );
  assert.deepEqual(downsampleMinMax([1, 2, 3], [1, null, NaN], 10), [[1, 1]]);
});

test('EMA is debiased (a constant stays constant) and skips gaps', () => {
  assert.deepEqual(
    ema([2, 2, 2], 0.9).map((x) => Number(x!.toFixed(12))),
    [2, 2, 2],
  );
  const e = ema([0, null, 10], 0.5);
  assert.equal(e[1], null);
  assert.ok(Math.abs(e[2]! - (0.5 * 10) / (1 - 0.25)) < 1e-12);
});

test('nice ticks are round, cover the range and are few', () => {
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0.5, 1, 5), [0.5, 0.6, 0.7, 0.8, 0.9, 1]);
  assert.deepEqual(niceTicks(0, 3e-4, 3), [0, 1e-4, 2e-4, 3e-4]);
  fc.assert(
    fc.property(fc.double({ min: -1e6, max: 1e6, noNaN: true }), fc.double({ min: 1e-6, max: 1e6, noNaN: true }), (lo, span) => {
      const t = niceTicks(lo, lo + span, 5);
      assert.ok(t.length >= 2 && t.length <= 12, `${t.length} ticks`);
      assert.ok(t[0]! >= lo - span * 1e-6 && t[t.length - 1]! <= lo + span * (1 + 1e-6));
    }),
    { numRuns: 200, seed: 5 },
  );
});
