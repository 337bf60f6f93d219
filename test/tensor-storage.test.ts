import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../worker/backend.js';
import { resolveModelConfig } from '../worker/model/config.js';
import { CxrModel, initialParams } from '../worker/model/vit.js';
import { overwriteVariable, storageOf } from '../worker/model/tensor-storage.js';

const cfg = resolveModelConfig({ preset: 'tiny', imageSize: 16, labels: ['a', 'b', 'c'], overrides: { width: 16, layers: 1, heads: 2, embedDim: 8 }, textDim: 6 });

for (const backend of ['cpu', 'wasm'] as const) {
  test(`${backend}: assignFlat writes the variables' own storage, never a view of the caller's vector`, async () => {
    await initBackend(backend);
    const model = new CxrModel(cfg, initialParams(cfg, 1));
    try {
      const before = tf.memory().numTensors;
      // The storage is reachable on this backend (else the step would fall back to new tensors).
      assert.ok(storageOf(model.variables[0]!) instanceof Float32Array);
      const next = initialParams(cfg, 2);
      model.assignFlat(next);
      assert.deepEqual(model.readFlat(), next);
      assert.equal(tf.memory().numTensors, before, 'no tensor is created or leaked by assignFlat');
      // The caller's vector is free to change (or to be moved to another thread) afterwards.
      const copy = next.slice();
      next.fill(7);
      assert.deepEqual(model.readFlat(), copy);
      // And the model computes with the new values, not stale ones.
      const x = tf.ones([2, 16, 16]) as tf.Tensor3D;
      const z1 = model.encodeImages(x).arraySync();
      const fresh = new CxrModel(cfg, copy);
      assert.deepEqual(fresh.encodeImages(x).arraySync(), z1);
      fresh.dispose();
    } finally {
      model.dispose();
    }
  });

  test(`${backend}: a variable whose data another tensor shares is replaced, not written through`, async () => {
    await initBackend(backend);
    const v = tf.variable(tf.tensor1d([1, 2, 3]), true, `shared-${backend}`);
    const alias = tf.reshape(v, [3, 1]); // shares v's data
    overwriteVariable(v, Float32Array.of(4, 5, 6));
    assert.deepEqual(Array.from(v.dataSync()), [4, 5, 6]);
    assert.deepEqual(Array.from(alias.dataSync()), [1, 2, 3]);
    alias.dispose();
    overwriteVariable(v, Float32Array.of(7, 8, 9)); // sole owner now: in place
    assert.deepEqual(Array.from(v.dataSync()), [7, 8, 9]);
    assert.throws(() => overwriteVariable(v, Float32Array.of(1)), /1 values for shared-\w+ of size 3/);
    v.dispose();
  });

  test(`${backend}: flattenGrads fills a reused buffer, zeros where a parameter has no gradient`, async () => {
    await initBackend(backend);
    const model = new CxrModel(cfg, initialParams(cfg, 1));
    try {
      const total = model.layout.total;
      const grads: tf.NamedTensorMap = {};
      model.variables.forEach((v, k) => {
        if (k !== 1) grads[v.name] = tf.fill(v.shape, k + 1);
      });
      const into = new Float32Array(total).fill(-1);
      assert.equal(model.flattenGrads(grads, into), into);
      model.layout.entries.forEach((e, k) => {
        const want = k === 1 ? 0 : k + 1;
        assert.ok(into.subarray(e.offset, e.offset + e.size).every((x) => x === want), `entry ${e.name}`);
      });
      assert.deepEqual(model.flattenGrads(grads), into);
      assert.throws(() => model.flattenGrads(grads, new Float32Array(3)), /a buffer of 3 for a layout of/);
      Object.values(grads).forEach((g) => g.dispose());
    } finally {
      model.dispose();
    }
  });
}
