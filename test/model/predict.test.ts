import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { resolveModelConfig } from '../../model/config.js';
import { scoreRows } from '../../model/predict.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import { mulberry32 } from '../../shared/random/generators.js';

await initBackend('cpu');

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema'];
const n = 7;
const r = mulberry32(3);
const images = Uint8Array.from({ length: n * 256 }, () => Math.floor(r() * 256));
const rowLabels = Float32Array.from({ length: n * 3 }, () => [1, 0, -1, NaN][Math.floor(r() * 4)]!);
const split = {
  reads: 0,
  async read(idx: ArrayLike<number>) {
    this.reads++;
    const a = idx[0]!;
    const k = idx.length;
    return { n: k, images: images.subarray(a * 256, (a + k) * 256), labels: rowLabels.subarray(a * 3, (a + k) * 3), first: a };
  },
};

for (const head of ['text', 'linear'] as const)
  test(`scoreRows (${head} head): the rows' logits (CxrModel.logits), unit embeddings and labels, whatever the chunk`, async () => {
    const cfg = resolveModelConfig({
      preset: 'tiny',
      imageSize: 16,
      labels,
      head,
      overrides: { width: 16, layers: 1, heads: 2, embedDim: 8 },
      textDim: 6,
    });
    const model = new CxrModel(cfg, initialParams(cfg, 4));
    try {
      const whole = tf.tidy(() => model.logits(model.encodeImages(model.pixelsToInput(images, n))));
      const expected = whole.dataSync();
      whole.dispose();
      const seen: number[] = [];
      const a = await scoreRows(
        model,
        split,
        { start: 0, end: n },
        { chunk: 3, scores: true, embeddings: true, onChunk: (b, _o, done) => seen.push(b.first, done) },
      );
      assert.deepEqual(seen, [0, 3, 3, 6, 6, 7], 'each chunk once, in order, with the rows done');
      a.scores!.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) < 1e-5, `score ${i}`));
      assert.deepEqual(a.labels, rowLabels);
      for (let i = 0; i < n; i++) {
        const e = a.embeddings!.subarray(i * 8, (i + 1) * 8);
        assert.ok(Math.abs(Math.hypot(...e) - 1) < 1e-5, `row ${i} embedding has unit norm`);
      }
      // A range of rows is read from its start; scores off, no score buffer.
      const b = await scoreRows(model, split, { start: 2, end: 5 }, { chunk: 8, scores: false, embeddings: true });
      assert.equal(b.scores, null);
      assert.deepEqual(b.embeddings, a.embeddings!.subarray(2 * 8, 5 * 8));
    } finally {
      model.dispose();
    }
  });
