import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import {
  classificationLoss,
  ContrastiveLoss,
  contrastiveLoss,
  cosineLogits,
  labelGroups,
  labelPriorLoss,
  multiPositiveTargets,
  packRows,
  sampleTextEmbeddings,
  withLiveSlice,
} from '../../model/losses.js';
import { labelPriorTarget } from '../../model/label-prior.js';
import { resolveTargets, uncertaintyPolicies } from '../../model/targets.js';
import { balancedPosWeights } from '../../coordinator/train/pos-weights.js';
import { loadLabelSet } from '../../shared/labels.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';
import { UserError } from '../../shared/util/errors.js';

await tf.setBackend('cpu');

const randn = (seed: number) => normalSource(mulberry32(seed));
const rand2d = (n: number, d: number, seed: number, scale = 1) => {
  const r = randn(seed);
  return tf.tensor2d(
    Float32Array.from({ length: n * d }, () => r() * scale),
    [n, d],
  );
};

/**
 * Central differences of f at every element of each input, against tf.grads. Float32 forward
 * passes limit the agreement to about 1e-3 relative; the tolerance leaves room for that only.
 */
function checkGrads(name: string, f: (...xs: tf.Tensor[]) => tf.Scalar, inputs: tf.Tensor[], eps = 1e-2, tol = 2e-2) {
  const analytic = tf
    .grads(f)(inputs)
    .map((g) => g.arraySync() as unknown);
  inputs.forEach((x, k) => {
    const base = x.dataSync().slice();
    const ga = tf.tensor(analytic[k] as number[]).dataSync() as Float32Array;
    let maxErr = 0;
    let maxMag = 1e-3;
    for (let i = 0; i < base.length; i++) {
      const at = (delta: number) => {
        const v = base.slice();
        v[i]! += delta;
        const xs = inputs.map((t, j) => (j === k ? tf.tensor(v, t.shape) : t));
        const y = f(...xs).dataSync()[0]!;
        return y;
      };
      const num = (at(eps) - at(-eps)) / (2 * eps);
      maxErr = Math.max(maxErr, Math.abs(num - ga[i]!));
      maxMag = Math.max(maxMag, Math.abs(num));
    }
    assert.ok(maxErr / maxMag < tol, `${name}: input ${k}: max |numeric - analytic| ${maxErr} vs scale ${maxMag}`);
  });
}

test('classification loss: gradients match finite differences (with positive weights and a mask)', () => {
  const n = 4,
    L = 3,
    D = 5;
  const targets = tf.tensor2d([1, 0, 0.7, 0, 1, 0, 1, 1, 0.2, 0, 0, 1], [n, L]);
  const mask = tf.tensor2d([1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1], [n, L]);
  const pw = tf.tensor1d([2, 1, 3.5]);
  const f = (img: tf.Tensor, lab: tf.Tensor, s: tf.Tensor, b: tf.Tensor) =>
    classificationLoss(cosineLogits(img as tf.Tensor2D, lab as tf.Tensor2D, s as tf.Scalar, b as tf.Tensor1D), targets, mask, pw, 7);
  checkGrads('classification', f, [rand2d(n, D, 1), rand2d(L, D, 2), tf.scalar(Math.log(5)), tf.tensor1d([0.1, -0.2, 0.3])]);
});

test('contrastive loss: gradients match finite differences (multi-positive targets, temperature)', () => {
  const N = 5,
    D = 4;
  const groups = Int32Array.from([0, 1, 0, 2, 1]);
  const G = tf.tensor2d(multiPositiveTargets(groups), [N, N]);
  const f = (z: tf.Tensor, t: tf.Tensor, s: tf.Tensor) => contrastiveLoss(z as tf.Tensor2D, t as tf.Tensor2D, G, s as tf.Scalar);
  checkGrads('contrastive', f, [rand2d(N, D, 3), rand2d(N, D, 4), tf.scalar(Math.log(3))]);
});

test('contrastive temperature is clamped at 100 like CLIP (no gradient beyond it)', () => {
  const G = tf.tensor2d(multiPositiveTargets(Int32Array.from([0, 1, 2])), [3, 3]);
  const z = rand2d(3, 4, 5);
  const t = rand2d(3, 4, 6);
  const [g] = tf.grads((s: tf.Tensor) => contrastiveLoss(z, t, G, s as tf.Scalar))([tf.scalar(Math.log(200))]);
  assert.equal(g!.dataSync()[0], 0);
  const a = contrastiveLoss(z, t, G, tf.scalar(Math.log(200))).dataSync()[0]!;
  const b = contrastiveLoss(z, t, G, tf.scalar(Math.log(100))).dataSync()[0]!;
  assert.ok(Math.abs(a - b) < 1e-5);
});

test('label prior and per-image text embeddings: gradients match finite differences', () => {
  const L = 4,
    D = 3;
  const S = tf.tensor2d(Float32Array.from([1, 0.5, 0, 0, 0.5, 1, 0.25, 0, 0, 0.25, 1, 0, 0, 0, 0, 1]), [L, L]);
  checkGrads('label prior', (t) => labelPriorLoss(t as tf.Tensor2D, S, 2), [rand2d(L, D, 7)]);
  const targets = tf.tensor2d([1, 0, 0.6, 1, 0, 0, 1, 0], [2, L]);
  const mask = tf.tensor2d([1, 1, 1, 0, 1, 0, 1, 1], [2, L]);
  const G = tf.tensor2d(multiPositiveTargets(Int32Array.from([0, 1])), [2, 2]);
  const z = rand2d(2, D, 8);
  checkGrads(
    'text embeddings through contrastive',
    (p, q) => contrastiveLoss(z, sampleTextEmbeddings(p as tf.Tensor2D, q as tf.Tensor2D, targets, mask), G, tf.scalar(1)),
    [rand2d(L, D, 9), rand2d(L, D, 10)],
  );
});

test('losses do not depend on the order of the batch', () => {
  const N = 6,
    L = 3,
    D = 4;
  const raw = Float32Array.from([1, 0, NaN, 0, 0, 0, 1, 0, NaN, 0, 1, -1, 0, 0, 0, 1, 1, 1]);
  const perm = [3, 0, 5, 1, 4, 2];
  const permute = (a: Float32Array, w: number) => Float32Array.from(perm.flatMap((i) => Array.from(a.subarray(i * w, (i + 1) * w))));
  const opts = { uncertainty: uncertaintyPolicies(['a', 'b', 'c'], 'lsr-ones', []), blank: 'mask' as const, seed: 4 };
  const keys = [10, 11, 12, 13, 14, 15];
  const z = rand2d(N, D, 11).dataSync() as Float32Array;
  const P = rand2d(L, D, 12);
  const Q = rand2d(L, D, 13);
  const names = rand2d(L, D, 14);
  const losses = (labels: Float32Array, zz: Float32Array, k: number[]) => {
    const { targets, mask } = resolveTargets(labels, N, L, opts, k, 2);
    const tg = tf.tensor2d(targets, [N, L]);
    const ms = tf.tensor2d(mask, [N, L]);
    const img = tf.tensor2d(zz, [N, D]);
    const cls = classificationLoss(cosineLogits(img, names, tf.scalar(1), tf.zeros([L]) as tf.Tensor1D), tg, ms, null, N).dataSync()[0]!;
    const G = tf.tensor2d(multiPositiveTargets(labelGroups(labels, N, L)), [N, N]);
    const con = contrastiveLoss(img, sampleTextEmbeddings(P, Q, tg, ms), G, tf.scalar(2)).dataSync()[0]!;
    return [cls, con];
  };
  const a = losses(raw, z, keys);
  const b = losses(
    permute(raw, L),
    permute(z, D),
    perm.map((i) => keys[i]!),
  );
  assert.ok(Math.abs(a[0]! - b[0]!) < 1e-5 && Math.abs(a[1]! - b[1]!) < 1e-5, `${a} vs ${b}`);
});

test('uncertainty policies, blank handling and keyed label smoothing', () => {
  const labels = Float32Array.from([1, 0, -1, NaN, -1, -1, -1, -1]);
  const pol = uncertaintyPolicies(['A', 'B', 'C', 'D'], 'ignore', ['C=lsr-ones']);
  assert.deepEqual(pol, ['ignore', 'ignore', 'lsr-ones', 'ignore']);
  const r = resolveTargets(labels, 2, 4, { uncertainty: ['ones', 'zeros', 'lsr-ones', 'lsr-zeros'], blank: 'mask', seed: 1 }, [7, 8], 0);
  assert.deepEqual(Array.from(r.mask), [1, 1, 1, 0, 1, 1, 1, 1]);
  assert.equal(r.targets[0], 1);
  assert.ok(r.targets[2]! >= 0.55 && r.targets[2]! <= 0.85);
  assert.deepEqual([r.targets[4], r.targets[5]], [1, 0]);
  assert.ok(r.targets[6]! >= 0.55 && r.targets[6]! <= 0.85 && r.targets[7]! >= 0 && r.targets[7]! <= 0.3);
  const again = resolveTargets(
    labels.subarray(4),
    1,
    4,
    { uncertainty: ['ones', 'zeros', 'lsr-ones', 'lsr-zeros'], blank: 'zeros', seed: 1 },
    [8],
    0,
  );
  assert.equal(again.targets[2], r.targets[6], 'a sample draws the same smoothed target wherever it sits');
  const blankZero = resolveTargets(labels, 2, 4, { uncertainty: pol, blank: 'zeros', seed: 1 }, [7, 8], 0);
  assert.equal(blankZero.mask[3], 1);
  assert.equal(blankZero.targets[3], 0);
  assert.throws(
    () => uncertaintyPolicies(['A'], 'ignore', ['B=ones']),
    (e: unknown) => e instanceof UserError && /no label 'B'/.test(e.message),
  );
  assert.throws(() => uncertaintyPolicies(['A'], 'maybe', []), UserError);
  assert.deepEqual(Array.from(balancedPosWeights(Float32Array.from([1, 0, 0, 0, 0, 1, 0, NaN]), 2)), [3, 2]);
});

test('label prior target: identity for orth, 0.5^distance over the label graph for graph', () => {
  const set = loadLabelSet('chexpert14');
  const L = set.labels.length;
  const S = labelPriorTarget('graph', set.labels, set);
  const at = (a: string, b: string) => S[set.labels.indexOf(a) * L + set.labels.indexOf(b)]!;
  assert.equal(at('Edema', 'Edema'), 1);
  assert.equal(at('Lung Opacity', 'Edema'), 0.5);
  assert.equal(at('Edema', 'Lung Opacity'), 0.5);
  assert.equal(at('Edema', 'Atelectasis'), 0.25);
  assert.equal(at('Pleural Effusion', 'Pneumothorax'), 0.5);
  assert.equal(at('Enlarged Cardiomediastinum', 'Cardiomegaly'), 0.5);
  assert.equal(at('No Finding', 'Edema'), 0);
  assert.equal(at('Fracture', 'Cardiomegaly'), 0);
  const I = labelPriorTarget('orth', set.labels, null);
  assert.equal(
    I.reduce((a, b) => a + b, 0),
    L,
  );
  assert.throws(() => labelPriorTarget('graph', ['x'], null), UserError);
});

test('withLiveSlice: values of the gathered matrix, gradient only into the live rows', () => {
  const gathered = Float32Array.from({ length: 12 }, (_, i) => i);
  const live = tf.tensor2d([
    [100, 101],
    [102, 103],
  ]);
  const g = tf.grads((x: tf.Tensor) => tf.sum(tf.mul(withLiveSlice(gathered, x as tf.Tensor2D, 2), tf.range(1, 13).reshape([6, 2]))))([
    live,
  ])[0]!;
  assert.deepEqual(Array.from(withLiveSlice(gathered, live, 2).dataSync()), [0, 1, 2, 3, 100, 101, 102, 103, 8, 9, 10, 11]);
  assert.deepEqual(Array.from(g.dataSync()), [5, 6, 7, 8]);
});

test('ContrastiveLoss: each rank, gathering the others, gets the whole batch loss, and the gradient of its own rows', () => {
  const N = 5;
  const L = 2;
  const Z = rand2d(N, 3, 11);
  const T = rand2d(N, 3, 12);
  const labels = Float32Array.of(1, 0, 1, 0, 0, 1, NaN, 1, 0, 1);
  const scale = tf.scalar(Math.log(10));
  const whole = (z: tf.Tensor2D, t: tf.Tensor2D) =>
    contrastiveLoss(z, t, tf.tensor2d(multiPositiveTargets(labelGroups(labels, N, L)), [N, N]), scale);
  const expected = whole(Z, T).dataSync()[0]!;
  const [gz] = tf.grads((z: tf.Tensor) => whole(z as tf.Tensor2D, T))([Z]);
  const rowCounts = [2, 3];
  const rows = (x: tf.Tensor2D, r: number) => x.slice([r === 0 ? 0 : 2, 0], [rowCounts[r]!, x.shape[1]]) as tf.Tensor2D;
  const packed = (r: number) =>
    packRows([
      labels.subarray((r === 0 ? 0 : 2) * L, (r === 0 ? 2 : 5) * L),
      rows(Z, r).dataSync() as Float32Array,
      rows(T, r).dataSync() as Float32Array,
    ]);
  const gather = () => packRows([packed(0), packed(1)]);
  for (const rank of [0, 1]) {
    const loss = new ContrastiveLoss({ rank, world: 2, rowCounts, gather });
    const local = labels.subarray((rank === 0 ? 0 : 2) * L, (rank === 0 ? 2 : 5) * L);
    const value = loss.forward(rows(Z, rank), rows(T, rank), local, scale).dataSync()[0]!;
    assert.ok(Math.abs(value - expected) < 1e-6, `rank ${rank}: ${value} vs ${expected}`);
    const [g] = tf.grads((z: tf.Tensor) => loss.forward(z as tf.Tensor2D, rows(T, rank), local, scale))([rows(Z, rank)]);
    const want = rows(gz as tf.Tensor2D, rank).dataSync();
    g!.dataSync().forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-6, `rank ${rank} grad ${i}`));
  }
  const single = new ContrastiveLoss({ rank: 0, world: 1, rowCounts: [N], gather: () => assert.fail('world 1 gathers nothing') });
  assert.equal(single.forward(Z, T, labels, scale).dataSync()[0], expected);
});
