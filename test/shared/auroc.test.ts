import { test } from 'node:test';
import assert from 'node:assert/strict';
import { auroc, aurocReport } from '../../shared/metrics/auroc.js';
import { mulberry32 } from '../../shared/random/generators.js';

/** The definition: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 on a tie. */
function bruteForce(s: number[], y: number[]): number | null {
  let num = 0;
  let pairs = 0;
  for (let i = 0; i < s.length; i++)
    for (let j = 0; j < s.length; j++)
      if (y[i] === 1 && y[j] === 0) {
        pairs++;
        num += s[i]! > s[j]! ? 1 : s[i] === s[j] ? 0.5 : 0;
      }
  return pairs ? num / pairs : null;
}

test('AUROC equals the brute-force pair count on random data with many ties', () => {
  const rand = mulberry32(42);
  for (let trial = 0; trial < 300; trial++) {
    const n = 1 + Math.floor(rand() * 40);
    const levels = 1 + Math.floor(rand() * 6);
    const s = Array.from({ length: n }, () => Math.floor(rand() * levels) / levels);
    const y = Array.from({ length: n }, () => (rand() < 0.4 ? 1 : 0));
    const a = auroc(s, y);
    const b = bruteForce(s, y);
    if (b === null) assert.equal(a, null);
    else assert.ok(Math.abs(a! - b) < 1e-12, `trial ${trial}: ${a} vs ${b}`);
  }
  assert.equal(auroc([0.1, 0.9], [1, 0]), 0);
  assert.equal(auroc([1, 1, 1], [1, 0, 1]), 0.5);
});

test('report: per-label nulls, means, competition mean, uncertain/blank rows left out, seeded CI', () => {
  const labelNames = ['Atelectasis', 'Edema', 'Hernia'];
  const n = 6;
  const scores = Float32Array.from([0.9, 0.2, 0.5, 0.1, 0.8, 0.4, 0.8, 0.3, 0.1, 0.2, 0.1, 0.3, 0.7, 0.9, 0.2, 0.3, 0.5, 0.6]);
  const labels = Float32Array.from([1, 0, 0, 0, 1, 0, 1, -1, 0, 0, NaN, 0, 1, 1, 0, 0, 0, 0]);
  const r = aurocReport({ scores, labels, n, labelNames }, ['Atelectasis', 'Edema', 'Cardiomegaly']);
  assert.equal(r.auroc.Hernia, null);
  assert.equal(r.auroc.Atelectasis, 1);
  // Edema: rows with 1/0 only: (0.2,0), (0.4,0), (0.9,1), (0.6,0) -> 1
  assert.equal(r.auroc.Edema, 1);
  assert.equal(r.mean_auroc, 1);
  assert.equal(r.mean_auroc_competition, 1);
  const b1 = aurocReport({ scores, labels, n, labelNames }, ['Atelectasis'], { replicates: 50, seed: 3 });
  const b2 = aurocReport({ scores, labels, n, labelNames }, ['Atelectasis'], { replicates: 50, seed: 3 });
  assert.deepEqual(b1.ci, b2.ci);
  assert.equal(b1.ci!.Hernia, null);
  assert.deepEqual(b1.bootstrap, { level: 0.95, replicates: 50, seed: 3 });
  const [lo, hi] = b1.mean_auroc_ci!;
  assert.ok(lo <= hi && hi <= 1);
});

test('a bootstrap replicate scored by row multiplicities equals the AUROC of the materialised resample', async () => {
  const { sortedColumn, weightedAuroc } = await import('../../shared/metrics/auroc.js');
  const rand = mulberry32(9);
  for (let trial = 0; trial < 100; trial++) {
    const n = 2 + Math.floor(rand() * 30);
    const scores = Float32Array.from({ length: n }, () => Math.floor(rand() * 4) / 4);
    const labels = Float32Array.from({ length: n }, () => [1, 0, 0, NaN, -1][Math.floor(rand() * 5)]!);
    const counts = new Int32Array(n);
    for (let i = 0; i < n; i++) counts[Math.floor(rand() * n)]++;
    const s: number[] = [];
    const y: number[] = [];
    counts.forEach((c, i) => {
      for (let k = 0; k < c; k++)
        if (labels[i] === 1 || labels[i] === 0) {
          s.push(scores[i]!);
          y.push(labels[i]!);
        }
    });
    const col = sortedColumn({ scores, labels, n, labelNames: ['x'] }, 0);
    const a = weightedAuroc(col, counts);
    const b = bruteForce(s, y);
    if (b === null) assert.equal(a, null);
    else assert.ok(Math.abs(a! - b) < 1e-12, `trial ${trial}: ${a} vs ${b}`);
  }
});
