import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { PRIOR_SCOPES, priorScope, scopedPriorLoss, statePriorTarget, type PriorScope } from '../../model/prior-scope.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';
import { UserError } from '../../shared/util/errors.js';

await tf.setBackend('cpu');

const L = 3;
const D = 8;
const W = 2;

/** Float64 reference: mean((T T^T - S)^2) over row-normalised T [n, D]. */
function priorRef(T: Float64Array, n: number, S: ArrayLike<number>): number {
  const N = Array.from({ length: n }, (_, i) => {
    const row = T.subarray(i * D, (i + 1) * D);
    const norm = Math.sqrt(row.reduce((a, x) => a + x * x, 0));
    return Array.from(row, (x) => x / norm);
  });
  let sum = 0;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      const c = N[i]!.reduce((a, x, k) => a + x * N[j]![k]!, 0);
      sum += (c - S[i * n + j]!) ** 2;
    }
  return sum / (n * n);
}

/** The scoped loss in float64 from the three [L, D] blocks. */
function scopedRef(names: Float64Array, pos: Float64Array, neg: Float64Array, scope: PriorScope, S: Float32Array): number {
  let v = 0;
  if (scope !== 'states') v += priorRef(names, L, S);
  if (scope !== 'names') {
    const P = new Float64Array(2 * L * D);
    P.set(pos);
    P.set(neg, L * D);
    v += priorRef(P, 2 * L, statePriorTarget(L));
  }
  return v / W;
}

function blocks(seed: number): Float64Array[] {
  const r = normalSource(mulberry32(seed));
  // Values exactly representable in float32, so tf and the reference start from the same numbers.
  return [0, 1, 2].map(() => Float64Array.from({ length: L * D }, () => Math.fround(r())));
}

test('prior scope: the state target is the 2L identity; a bad scope is a clear error', () => {
  assert.deepEqual(Array.from(statePriorTarget(2)), [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
  assert.deepEqual([...PRIOR_SCOPES], ['names', 'states', 'all']);
  assert.equal(priorScope('states'), 'states');
  assert.throws(
    () => priorScope('prompts'),
    (e: Error) => e instanceof UserError && /--prior-scope 'prompts': expected one of names, states, all/.test(e.message),
  );
  // Orthonormal state prompts meet the state target exactly, whatever the names.
  const eye = tf.tensor2d(
    Array.from({ length: 2 * L * D }, (_, k) => (k % D === Math.floor(k / D) ? 1 : 0)),
    [2 * L, D],
  );
  const [pos, neg] = tf.split(eye, 2, 0) as [tf.Tensor2D, tf.Tensor2D];
  const names = tf.tensor2d(Float32Array.from(blocks(1)[0]!), [L, D]);
  assert.ok(scopedPriorLoss({ names, positive: pos, negative: neg }, 'states', null, 1).dataSync()[0]! < 1e-12);
  // "Positive X" and "Negative X" equal: the state prior counts their cosine of 1 against a target of 0, twice.
  const same = scopedPriorLoss({ names, positive: pos, negative: pos }, 'states', null, 1).dataSync()[0]!;
  assert.ok(Math.abs(same - (2 * L) / (2 * L) ** 2) < 1e-6, `${same}`);
});

test('prior scope: values equal the float64 reference; gradients match central differences; each scope reaches only its prompts', () => {
  // A 3-label graph target as --label-prior graph makes one: 0 and 1 related (0.5), 2 unrelated.
  const target = Float32Array.from([1, 0.5, 0, 0.5, 1, 0, 0, 0, 1]);
  for (const scope of PRIOR_SCOPES) {
    const [n64, p64, q64] = blocks(7);
    const f = (names: tf.Tensor, pos: tf.Tensor, neg: tf.Tensor) =>
      scopedPriorLoss(
        { names: names as tf.Tensor2D, positive: pos as tf.Tensor2D, negative: neg as tf.Tensor2D },
        scope,
        tf.tensor2d(target, [L, L]),
        W,
      );
    const inputs = [n64, p64, q64].map((b) => tf.tensor2d(Float32Array.from(b!), [L, D]));
    const value = f(inputs[0]!, inputs[1]!, inputs[2]!).dataSync()[0]!;
    const ref = scopedRef(n64!, p64!, q64!, scope, target);
    assert.ok(Math.abs(value - ref) <= 1e-5 * ref, `${scope}: value ${value} vs reference ${ref}`);
    // Gradients into the prompts the scope covers; the others do not enter the loss at all.
    const reached = [scope !== 'states', scope !== 'names', scope !== 'names'];
    const live = [0, 1, 2].filter((k) => reached[k]);
    const g = tf.grads((...xs: tf.Tensor[]) => {
      const all = inputs.map((x, k) => (reached[k] ? xs[live.indexOf(k)]! : x));
      return f(all[0]!, all[1]!, all[2]!);
    })(live.map((k) => inputs[k]!));
    const eps = 1e-5;
    const x64 = [n64!, p64!, q64!];
    for (let k = 0; k < 3; k++) {
      const analytic = reached[k] ? (g[live.indexOf(k)]!.dataSync() as Float32Array) : new Float32Array(L * D);
      let maxErr = 0;
      let maxMag = 0;
      for (let i = 0; i < L * D; i++) {
        const at = (delta: number) => {
          const xs = x64.map((x) => x.slice());
          xs[k]![i]! += delta;
          return scopedRef(xs[0]!, xs[1]!, xs[2]!, scope, target);
        };
        const num = (at(eps) - at(-eps)) / (2 * eps);
        maxErr = Math.max(maxErr, Math.abs(num - analytic[i]!));
        maxMag = Math.max(maxMag, Math.abs(num));
      }
      if (reached[k]) assert.ok(maxMag > 1e-4 && maxErr <= 1e-4 * maxMag, `${scope}, input ${k}: max error ${maxErr} vs scale ${maxMag}`);
      else assert.equal(maxMag, 0, `${scope}: input ${k} does not enter the loss`);
    }
  }
});
