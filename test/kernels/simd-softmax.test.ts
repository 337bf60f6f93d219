import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { wasmApi } from '../../kernels/wasm-asm.js';
import { initBackend } from '../../kernels/backend.js';
import { softmax } from '../../model/layers.js';
import { simdSoftmax } from '../../kernels/simd/softmax.js';
import { SOFTMAX_GRAD_KERNEL, wasmSoftmaxGradActive } from '../../kernels/tfjs/softmax-grad.js';
import { withKernelOptions } from '../../kernels/options.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

await initBackend('wasm');

const randArray = (n: number, seed: number, scale = 1) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r() * scale);
};

/** softmax(x) and its gradient for dy on the active backend. */
function softmaxAndGrad(shape: number[], seed: number): Float32Array[] {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf
    .tidy(() => {
      const x = tf.tensor(randArray(n, seed, 3), shape);
      const dy = tf.tensor(randArray(n, seed + 1), shape);
      return [softmax(x), ...tf.grads((a: tf.Tensor) => softmax(a))([x], dy)];
    })
    .map((t) => {
      const v = Float32Array.from(t.dataSync() as Float32Array);
      t.dispose();
      return v;
    });
}

// Rows of 1..3 (tail only), 4, 5, 13, 65 (the attention's tokens) columns.
const SHAPES = [
  [1, 1],
  [3, 2],
  [2, 3],
  [5, 4],
  [7, 5],
  [2, 7, 13],
  [4, 65, 65],
  [3, 1, 8],
];

test("softmax's one-pass gradient on wasm gives the bits of tfjs's Multiply/Sum/Multiply/Sub, and runs instead of them", async () => {
  SHAPES.forEach((shape, s) => {
    assert.ok(wasmSoftmaxGradActive());
    const fused = softmaxAndGrad(shape, 10 + 2 * s);
    const plain = withKernelOptions({ softmaxGrad: false }, () => softmaxAndGrad(shape, 10 + 2 * s));
    fused.forEach((v, i) => assert.deepEqual(v, plain[i], `[${shape}] ${['y', 'dx'][i]}`));
  });
  const on = await tf.profile(() => tf.dispose(softmaxAndGrad([4, 65, 65], 1) as unknown as tf.Tensor[]));
  assert.ok(on.kernelNames.includes(SOFTMAX_GRAD_KERNEL) && !on.kernelNames.includes('Sub'), `kernels: ${on.kernelNames}`);
  await withKernelOptions({ softmaxGrad: false }, async () => {
    assert.equal(wasmSoftmaxGradActive(), false);
    const off = await tf.profile(() => tf.dispose(softmaxAndGrad([4, 65, 65], 1) as unknown as tf.Tensor[]));
    assert.ok(!off.kernelNames.includes(SOFTMAX_GRAD_KERNEL), `kernels: ${off.kernelNames}`);
  });
});

test("softmax's gradient on wasm agrees with the cpu backend; cpu keeps tf.softmax", () => {
  SHAPES.forEach((shape, s) => {
    const got = softmaxAndGrad(shape, 50 + 2 * s);
    tf.setBackend('cpu');
    assert.equal(wasmSoftmaxGradActive(), false);
    const want = softmaxAndGrad(shape, 50 + 2 * s);
    tf.setBackend('wasm');
    want.forEach((w, i) => {
      for (let j = 0; j < w.length; j++)
        assert.ok(Math.abs(got[i]![j]! - w[j]!) <= 1e-6, `[${shape}] ${['y', 'dx'][i]}[${j}]: ${got[i]![j]} vs cpu ${w[j]}`);
    });
  });
});

test("the softmax-gradient kernel binds to a plain memory and refuses the threaded build's shared memory", () => {
  const { Memory } = wasmApi!;
  assert.notEqual(simdSoftmax(new Memory({ initial: 1 })), null);
  assert.equal(simdSoftmax(new Memory({ initial: 1, maximum: 4, shared: true })), null);
});
