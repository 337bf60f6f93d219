import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { quickGelu } from '../../model/layers.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

for (const backend of ['wasm', 'cpu'] as const)
  test(`quickGelu's custom gradient is autodiff's of x sigmoid(1.702 x), to the bit (${backend})`, async () => {
    await initBackend(backend);
    const r = normalSource(mulberry32(8));
    const x = tf.tensor2d(
      Float32Array.from({ length: 6 * 40 }, () => 4 * r()),
      [6, 40],
    );
    const dy = tf.tensor2d(
      Float32Array.from({ length: 6 * 40 }, () => r()),
      [6, 40],
    );
    const autodiff = (a: tf.Tensor) => tf.mul(a, tf.sigmoid(tf.mul(a, 1.702)));
    const [ours, ref] = [quickGelu, autodiff].map((f) => [f(x), tf.grads((a: tf.Tensor) => f(a))([x], dy)[0]!].map((t) => t.dataSync()));
    assert.deepEqual(ours![0], ref![0]);
    assert.deepEqual(ours![1], ref![1]);
  });
