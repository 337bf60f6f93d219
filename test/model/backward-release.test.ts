import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { releasingBackward } from '../../model/backward-release.js';
import { resolveModelConfig } from '../../model/config.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import type { ClipTextShape } from '../../model/text/clip-text.js';
import { mulberry32 } from '../../shared/random/generators.js';

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema', 'Pleural Effusion'];
const tower: ClipTextShape = {
  kind: 'clip',
  vocabSize: 32,
  contextLength: 8,
  width: 16,
  heads: 2,
  layers: 2,
  embedDim: 8,
  quickGelu: true,
  prefix: '',
};

/** Both towers (the image tower with exact GELU, CLIP's text tower with QuickGELU and its causal mask) in one loss. */
function model(): CxrModel {
  const c = resolveModelConfig({
    preset: 'tiny',
    imageSize: 16,
    labels,
    overrides: { width: 16, layers: 2, heads: 2, embedDim: 8 },
  });
  const tokens = Array.from({ length: 12 }, (_, i) => [30, 1 + (i % 7), 2 + (i % 5), ...(i % 2 ? [3] : []), 31, ...(i % 2 ? [] : [0])]);
  const cfg = { ...c, text: { kind: 'tower' as const, dim: tower.embedDim, tower, tokens } };
  return new CxrModel(cfg, initialParams(cfg, 3));
}

/** Every variable's gradient (in variable order, as plain arrays) and the engine's peak bytes while taking them. */
async function gradients(m: CxrModel, release: boolean): Promise<{ grads: (Float32Array | null)[]; peak: number; leaked: number }> {
  const r = mulberry32(4);
  const pixels = Uint8Array.from({ length: 3 * 256 }, () => Math.floor(r() * 256));
  const before = tf.memory().numTensors;
  let grads: tf.NamedTensorMap = {};
  const f = () => tf.sum(tf.square(m.logits(m.encodeImages(m.pixelsToInput(pixels, 3))))) as tf.Scalar;
  const prof = await tf.profile(() => {
    const g = tf.variableGrads(release ? releasingBackward(f) : f, m.variables);
    g.value.dispose();
    grads = g.grads;
  });
  // Parameters the loss does not reach (logit_scale) have no gradient.
  const out = m.variables.map((v) => (grads[v.name]?.dataSync() as Float32Array | undefined) ?? null);
  Object.values(grads).forEach((g) => g.dispose());
  return { grads: out, peak: prof.peakBytes, leaked: tf.memory().numTensors - before };
}

for (const backend of ['wasm', 'cpu'] as const)
  test(`releasing the backward as it goes gives the same gradient bits, leaks nothing and lowers the peak (${backend})`, async () => {
    await initBackend(backend);
    const m = model();
    try {
      const plain = await gradients(m, false);
      const released = await gradients(m, true);
      assert.equal(released.grads.length, plain.grads.length);
      released.grads.forEach((g, i) => assert.deepEqual(g, plain.grads[i], `gradient of ${m.variables[i]!.name}`));
      assert.ok(plain.grads.filter((g) => g !== null).length > 40);
      assert.equal(plain.leaked, 0);
      assert.equal(released.leaked, 0);
      assert.ok(released.peak < plain.peak, `peak ${released.peak} bytes released, ${plain.peak} plain`);
    } finally {
      m.dispose();
    }
  });

test('a gradient that hands its dy through, to two inputs, is not freed under the other', async () => {
  await initBackend('cpu');
  // y = sum((a + b) * c) through a custom gradient whose backward returns dy itself for a and b.
  const pass = tf.customGrad((a, b, save) => {
    (save as tf.GradSaveFunc)([]);
    return { value: tf.add(a as tf.Tensor, b as tf.Tensor), gradFunc: (dy: tf.Tensor) => [dy, dy] };
  });
  const a = tf.tensor1d([1, 2, 3]);
  const b = tf.tensor1d([4, 5, 6]);
  const c = tf.tensor1d([7, 8, 9]);
  // a and b also go on through their own branches, so their gradients are summed after the pass-through.
  const f = (x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.add(tf.mul(pass(tf.mul(x, 2), tf.mul(y, 3)) as tf.Tensor, c), tf.add(x, y)));
  const plain = tf
    .grads(f)([a, b])
    .map((g) => Array.from(g.dataSync()));
  const released = tf
    .grads((x: tf.Tensor, y: tf.Tensor) => releasingBackward(() => f(x, y) as tf.Scalar)())([a, b])
    .map((g) => Array.from(g.dataSync()));
  assert.deepEqual(released, plain);
  assert.deepEqual(plain, [
    [15, 17, 19],
    [22, 25, 28],
  ]);
});
