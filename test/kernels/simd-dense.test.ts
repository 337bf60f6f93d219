import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { dense, residualMlp, type DenseEpilogue } from '../../model/layers.js';
import { DENSE_KERNEL, wasmDenseActive } from '../../kernels/tfjs/dense.js';
import { MATMUL_MUL_KERNEL } from '../../kernels/tfjs/matmul-mul.js';
import { SOFTMAX_GRAD_KERNEL } from '../../kernels/tfjs/softmax-grad.js';
import { withKernelOptions } from '../../kernels/options.js';
import { gemmVariants } from '../../kernels/simd/gemm.js';
import { assertStepBitsWithSwitchesOff, kernelsOf } from '../fixtures/step-bits.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

await initBackend('wasm');

const randArray = (n: number, seed: number, scale = 1) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r() * scale);
};

type Kind = 'bias' | 'gelu' | 'residual';
const KINDS: readonly Kind[] = ['bias', 'gelu', 'residual'];

/**
 * dense(x, W, b[, then]) and its gradients with respect to x, W, b (and the residual) for an
 * upstream gradient dy, on the active backend, as flat arrays: [y, dx, dW, db(, dr)].
 */
function denseAndGrads(kind: Kind, rows: number, k: number, n: number, seed: number): Float32Array[] {
  return tf
    .tidy(() => {
      const x = tf.tensor2d(randArray(rows * k, seed), [rows, k]);
      const w = tf.tensor2d(randArray(k * n, seed + 1, k ** -0.5), [k, n]);
      // Biases of a few units: GELU sees both tails, the adds round.
      const b = tf.tensor1d(randArray(n, seed + 2, 2));
      const r = tf.tensor2d(randArray(rows * n, seed + 3), [rows, n]);
      const dy = tf.tensor2d(randArray(rows * n, seed + 4), [rows, n]);
      const then = (rr: tf.Tensor): DenseEpilogue | undefined =>
        kind === 'gelu' ? { gelu: true } : kind === 'residual' ? { residual: rr as tf.Tensor2D } : undefined;
      const f = (xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor, rr: tf.Tensor) =>
        dense(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D, then(rr));
      const y = f(x, w, b, r);
      const grads =
        kind === 'residual'
          ? tf.grads(f)([x, w, b, r], dy)
          : tf.grads((xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => f(xx, ww, bb, r))([x, w, b], dy);
      return [y, ...grads];
    })
    .map((t) => {
      const v = Float32Array.from(t.dataSync() as Float32Array);
      t.dispose();
      return v;
    });
}

/** Whether `f` ran the fused kernel: the kernels of one run, by name. */
// Every remainder of both tiles' rows (3, 4) and columns (12, 8), narrow (n < 96: the 4x8 tile of
// the FMA build) and wide, k from 1 to past the 256 block.
const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [7, 13, 5],
  [13, 101, 29],
  [2, 3, 0],
  [65, 130, 300],
  [9, 96, 16],
  [5, 384, 8],
];
const NAMES = ['y', 'dx', 'dW', 'db', 'dr'];

test('fused dense on wasm gives the bits of matMul, add (then GELU): values and gradients, odd shapes, both GEMM builds', async () => {
  for (const variant of gemmVariants()) {
    withKernelOptions({ gemmVariant: variant }, () => {
      for (const kind of KINDS) {
        SHAPES.forEach(([rows, n, k], s) => {
          assert.ok(wasmDenseActive(kind === 'gelu'));
          const fused = denseAndGrads(kind, rows, k, n, 100 + s);
          withKernelOptions({ denseEpilogue: false }, () => {
            assert.equal(wasmDenseActive(false), false);
            const plain = denseAndGrads(kind, rows, k, n, 100 + s);
            fused.forEach((v, i) => assert.deepEqual(v, plain[i], `${variant} ${kind} [${rows},${k}]x[${k},${n}] ${NAMES[i]}`));
          });
        });
      }
    });
  }
  // The option is what decides: on, one CxrDense; off, none.
  const run = () => tf.dispose(denseAndGrads('gelu', 7, 5, 13, 1) as unknown as tf.Tensor[]);
  assert.ok((await kernelsOf(run)).includes(DENSE_KERNEL));
  await withKernelOptions({ denseEpilogue: false }, async () => {
    assert.ok(!(await kernelsOf(run)).includes(DENSE_KERNEL));
  });
});

test("fused dense values and gradients agree with the cpu backend's unfused ops", () => {
  for (const kind of KINDS) {
    SHAPES.forEach(([rows, n, k], s) => {
      tf.setBackend('wasm');
      const got = denseAndGrads(kind, rows, k, n, 200 + s);
      tf.setBackend('cpu');
      assert.equal(wasmDenseActive(false), false, 'the fused kernel is for the wasm backend only');
      const want = denseAndGrads(kind, rows, k, n, 200 + s);
      tf.setBackend('wasm');
      want.forEach((w, i) => {
        let scale = 1;
        for (const v of w) scale = Math.max(scale, Math.abs(v));
        const g = got[i]!;
        assert.equal(g.length, w.length);
        // Sums of up to 300 products in another order, and GELU's erf approximations (~2e-7 apart).
        for (let j = 0; j < w.length; j++)
          assert.ok(
            Math.abs(g[j]! - w[j]!) <= 2e-5 * scale,
            `${kind} [${rows},${k}]x[${k},${n}] ${NAMES[i]}[${j}]: ${g[j]} vs cpu ${w[j]}`,
          );
      });
    });
  }
});

test('the fused dense is off where its unfused twin would not run on the same kernels: GEMM scope, GELU kernels off', () => {
  assert.equal(wasmDenseActive(true), true);
  withKernelOptions({ matMulScope: 'batched' }, () => {
    assert.equal(wasmDenseActive(false), false);
  });
  const y = withKernelOptions({ normGelu: false }, () => {
    assert.equal(wasmDenseActive(true), false);
    assert.equal(wasmDenseActive(false), true);
    // And the GELU variant then runs matMul + add + tfjs's GELU, still correct.
    return denseAndGrads('gelu', 3, 4, 5, 9)[0];
  });
  const [yFused] = denseAndGrads('gelu', 3, 4, 5, 9);
  yFused!.forEach((v, i) => assert.ok(Math.abs(v - y![i]!) <= 1e-6 * Math.max(1, Math.abs(v)), `y[${i}]: ${v} vs ${y![i]}`));
  const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'wasm-no-simd.js');
  const r = spawnSync(process.execPath, [fixture, '--run'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { simdFlag: boolean; dense: boolean };
  assert.equal(out.simdFlag, false);
  assert.equal(out.dense, false, 'without wasm SIMD dense keeps matMul + add');
});

/** residualMlp and its gradients with respect to all six inputs, on the active backend: [y, dx, dW1, db1, dW2, db2, dr]. */
function mlpAndGrads(rows: number, width: number, hidden: number, seed: number): Float32Array[] {
  return tf
    .tidy(() => {
      const x = tf.tensor2d(randArray(rows * width, seed), [rows, width]);
      const w1 = tf.tensor2d(randArray(width * hidden, seed + 1, width ** -0.5), [width, hidden]);
      const b1 = tf.tensor1d(randArray(hidden, seed + 2));
      const w2 = tf.tensor2d(randArray(hidden * width, seed + 3, hidden ** -0.5), [hidden, width]);
      const b2 = tf.tensor1d(randArray(width, seed + 4));
      const r = tf.tensor2d(randArray(rows * width, seed + 5), [rows, width]);
      const dy = tf.tensor2d(randArray(rows * width, seed + 6), [rows, width]);
      const f = (...t: tf.Tensor[]) =>
        residualMlp(...(t as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D]));
      return [f(x, w1, b1, w2, b2, r), ...tf.grads(f)([x, w1, b1, w2, b2, r], dy)];
    })
    .map((t) => {
      const v = Float32Array.from(t.dataSync() as Float32Array);
      t.dispose();
      return v;
    });
}

const MLP_SHAPES: [number, number, number][] = [
  [1, 1, 4],
  [7, 5, 20],
  [13, 12, 101],
  [65, 32, 128],
  [9, 130, 300],
];
const MLP_NAMES = ['y', 'dx', 'dW1', 'db1', 'dW2', 'db2', 'dr'];

test('residualMlp on wasm (one custom gradient, the GELU backward in the dy W2^T product) gives the bits of the two dense layers, both builds, and agrees with cpu', async () => {
  for (const variant of gemmVariants()) {
    withKernelOptions({ gemmVariant: variant }, () => {
      MLP_SHAPES.forEach(([rows, width, hidden], s) => {
        const fused = mlpAndGrads(rows, width, hidden, 300 + s);
        const plain = withKernelOptions({ denseEpilogue: false }, () => mlpAndGrads(rows, width, hidden, 300 + s));
        fused.forEach((v, i) => assert.deepEqual(v, plain[i], `${variant} [${rows},${width}] hidden ${hidden} ${MLP_NAMES[i]}`));
      });
    });
  }
  const kernels = await kernelsOf(() => tf.dispose(mlpAndGrads(7, 5, 20, 1) as unknown as tf.Tensor[]));
  assert.ok(kernels.includes(DENSE_KERNEL) && kernels.includes(MATMUL_MUL_KERNEL), `kernels: ${kernels}`);
  assert.ok(!kernels.includes('CxrGeluGrad') && !kernels.includes('Multiply'), `kernels: ${kernels}`);
  MLP_SHAPES.forEach(([rows, width, hidden], s) => {
    const got = mlpAndGrads(rows, width, hidden, 400 + s);
    tf.setBackend('cpu');
    const want = mlpAndGrads(rows, width, hidden, 400 + s);
    tf.setBackend('wasm');
    want.forEach((w, i) => {
      let scale = 1;
      for (const v of w) scale = Math.max(scale, Math.abs(v));
      for (let j = 0; j < w.length; j++)
        assert.ok(
          Math.abs(got[i]![j]! - w[j]!) <= 2e-5 * scale,
          `[${rows},${width}] hidden ${hidden} ${MLP_NAMES[i]}[${j}]: ${got[i]![j]} vs cpu ${w[j]}`,
        );
    });
  });
});

test("a training step's gradients have the same bits with the epilogues (and the one-pass softmax gradient) on and off, on every run, and leak no tensors", () =>
  assertStepBitsWithSwitchesOff(
    [DENSE_KERNEL, MATMUL_MUL_KERNEL, SOFTMAX_GRAD_KERNEL],
    [{ denseEpilogue: false }, { softmaxGrad: false }, { denseEpilogue: false, softmaxGrad: false }],
  ));
