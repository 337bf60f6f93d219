import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { resolveModelConfig } from '../../model/config.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import { overwriteVariable, storageOf } from '../../model/tensor-storage.js';
import { computeGradients, localComm, type StepOptions } from '../../worker/steps/forward-backward.js';
import { labelPriorTarget } from '../../model/label-prior.js';
import { adamwStep, decayMask } from '../../worker/steps/adamw.js';
import { DEFAULT_ADAMW } from '../../model/train-config.js';

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema'];
const cfg = resolveModelConfig({
  preset: 'tiny',
  imageSize: 16,
  labels,
  overrides: { width: 16, layers: 1, heads: 2, embedDim: 8 },
  textDim: 6,
});
const opts: StepOptions = {
  weights: { classification: 1, contrastive: 0.5, labelPrior: 0.1 },
  targets: { uncertainty: labels.map(() => 'ignore' as const), blank: 'mask', seed: 0 },
  posWeight: null,
  priorTarget: labelPriorTarget('orth', labels, null),
};
const N = 4;
const batch = {
  n: N,
  images: Uint8Array.from({ length: N * 16 * 16 }, (_, i) => (i * 37) & 255),
  labels: Float32Array.from({ length: N * labels.length }, (_, i) => (i % 3 === 0 ? 1 : 0)),
  indices: Array.from({ length: N }, (_, i) => i),
  epoch: 0,
};

for (const backend of ['cpu', 'wasm'] as const) {
  test(`${backend}: after assignFlat the model computes with the new values and never aliases the caller's vector`, async () => {
    await initBackend(backend);
    const model = new CxrModel(cfg, initialParams(cfg, 1));
    try {
      const x = tf.ones([2, 16, 16]) as tf.Tensor3D;
      // A forward and backward first: the backend may keep state derived from the weights, which
      // a write must not leave stale (writing wasm's heap in place did: the next step differed).
      await computeGradients(model, batch, localComm, opts);
      const before = tf.memory().numTensors;
      // The storage is readable on this backend (gradients are read through it).
      assert.ok(storageOf(model.variables[0]!) instanceof Float32Array);
      const next = initialParams(cfg, 2);
      model.assignFlat(next);
      assert.deepEqual(await model.readFlat(), next);
      assert.equal(tf.memory().numTensors, before, 'no tensor is created or leaked by assignFlat');
      // The caller's vector is free to change (or to be moved to another thread) afterwards.
      const copy = next.slice();
      next.fill(7);
      assert.deepEqual(await model.readFlat(), copy);
      // And the model computes with the new values, not stale ones.
      const z1 = model.encodeImages(x).arraySync();
      const fresh = new CxrModel(cfg, copy);
      assert.deepEqual(fresh.encodeImages(x).arraySync(), z1);
      const [a, b] = [await computeGradients(model, batch, localComm, opts), await computeGradients(fresh, batch, localComm, opts)];
      assert.equal(a.terms.total, b.terms.total);
      assert.deepEqual(a.grads, b.grads);
      fresh.dispose();
    } finally {
      model.dispose();
    }
  });

  test(`${backend}: steps through assignFlat compute what a model built from the same vector computes`, async () => {
    await initBackend(backend);
    const params = initialParams(cfg, 3);
    const model = new CxrModel(cfg, params);
    const m = new Float32Array(params.length);
    const v = new Float32Array(params.length);
    const mask = decayMask(model.layout);
    // The model alone first (another model's kernels in between could hide stale state), then
    // each step again on a model built from the vector that step started from.
    const seen: { params: Float32Array; loss: number; grads: Float32Array }[] = [];
    const into = new Float32Array(params.length); // reused, as the train step does
    for (let s = 1; s <= 3; s++) {
      const r = await computeGradients(model, batch, localComm, opts, true, into);
      seen.push({ params: params.slice(), loss: r.terms.total, grads: r.grads.slice() });
      adamwStep(params, r.grads, m, v, { start: 0, end: params.length }, { ...DEFAULT_ADAMW, lr: 1e-3 }, s, mask);
      model.assignFlat(params);
    }
    model.dispose();
    for (const [s, x] of seen.entries()) {
      const fresh = new CxrModel(cfg, x.params);
      const f = await computeGradients(fresh, batch, localComm, opts);
      fresh.dispose();
      assert.equal(x.loss, f.terms.total, `step ${s + 1}`);
      assert.deepEqual(x.grads, f.grads, `step ${s + 1}`);
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
      assert.equal(await model.flattenGrads(grads, into), into);
      model.layout.entries.forEach((e, k) => {
        const want = k === 1 ? 0 : k + 1;
        assert.ok(
          into.subarray(e.offset, e.offset + e.size).every((x) => x === want),
          `entry ${e.name}`,
        );
      });
      assert.deepEqual(await model.flattenGrads(grads), into);
      await assert.rejects(model.flattenGrads(grads, new Float32Array(3)), /a buffer of 3 for a layout of/);
      Object.values(grads).forEach((g) => g.dispose());
    } finally {
      model.dispose();
    }
  });
}
