import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { type ModelConfig, resolveModelConfig } from '../../model/config.js';
import { scoreRows } from '../../model/predict.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import { type PromptSource, promptLogits, promptPairs, promptSoftmax } from '../../model/zero-shot.js';
import { mulberry32 } from '../../shared/random/generators.js';

await initBackend('cpu');

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema'];
const L = labels.length;
const n = 7;
const D = 8;
const r = mulberry32(5);
const images = Uint8Array.from({ length: n * 256 }, () => Math.floor(r() * 256));
const rowLabels = Float32Array.from({ length: n * L }, () => [1, 0, -1, NaN][Math.floor(r() * 4)]!);
const split = {
  async read(idx: ArrayLike<number>) {
    const a = idx[0]!;
    const k = idx.length;
    return { n: k, images: images.subarray(a * 256, (a + k) * 256), labels: rowLabels.subarray(a * L, (a + k) * L) };
  },
};

function config(head: 'text' | 'linear', text?: { dim: number; file?: boolean }): ModelConfig {
  const c = resolveModelConfig({
    preset: 'tiny',
    imageSize: 16,
    labels,
    head,
    overrides: { width: 16, layers: 1, heads: 2, embedDim: D },
    textDim: text?.dim ?? 6,
    ...(text?.file ? { textEmbeddingsFile: 'prompts.json' } : {}),
  });
  return c;
}

/** CheXzero's prompt softmax in float64 from plain arrays: p = exp(s+) / (exp(s+) + exp(s-)), s = scale cos (or s+ - s-). */
function reference(z: number[][], pos: number[][], neg: number[][], scale: number, logOdds = false): number[][] {
  const unit = (v: number[]) => {
    const norm = Math.hypot(...v);
    return v.map((x) => x / norm);
  };
  const cos = (a: number[], b: number[]) => {
    const ua = unit(a),
      ub = unit(b);
    return ua.reduce((s, x, i) => s + x * ub[i]!, 0);
  };
  return z.map((zi) =>
    pos.map((p, l) => {
      const sp = scale * cos(zi, p),
        sn = scale * cos(zi, neg[l]!);
      return logOdds ? sp - sn : Math.exp(sp) / (Math.exp(sp) + Math.exp(sn));
    }),
  );
}

async function zeroShotScores(model: CxrModel, source: PromptSource, chunk: number, score = promptSoftmax) {
  const pairs = await promptPairs(model, source);
  try {
    const out = await scoreRows(
      model,
      split,
      { start: 0, end: n },
      { chunk, scores: true, embeddings: false, score: (z) => score(z, pairs) },
    );
    return { scores: out.scores!, scale: pairs.scale };
  } finally {
    pairs.dispose();
  }
}

function assertClose(got: Float32Array, want: number[][], tol: number, what: string) {
  let worst = 0;
  want.forEach((row, i) => row.forEach((v, l) => (worst = Math.max(worst, Math.abs(got[i * L + l]! - v)))));
  assert.ok(worst <= tol, `${what}: max |ours - reference| ${worst}`);
}

test('zero-shot (heads): the softmax over each label Positive/Negative prompt similarity (and its log-odds) equals a float64 reference, whatever the chunk', async () => {
  const cfg = config('text');
  const params = initialParams(cfg, 4);
  const model = new CxrModel(cfg, params);
  try {
    const z = tf.tidy(() => model.encodeImages(model.pixelsToInput(images, n)).arraySync());
    const t = model.encodeText();
    const [pos, neg] = [t.positive.arraySync(), t.negative.arraySync()];
    tf.dispose([t.names, t.positive, t.negative]);
    const a = await zeroShotScores(model, 'heads', 3);
    assert.ok(Math.abs(a.scale - 1 / 0.07) < 1e-4, `scale ${a.scale} is exp(logit_scale)`);
    assertClose(a.scores, reference(z, pos, neg, 1 / 0.07), 1e-5, 'chunk 3');
    const b = await zeroShotScores(model, 'heads', 8);
    assertClose(b.scores, reference(z, pos, neg, 1 / 0.07), 1e-5, 'chunk 8');
    // Evaluation ranks by the log-odds s+ - s-, which float32 does not round to ties at p = 1.
    const odds = await zeroShotScores(model, 'heads', 3, promptLogits);
    assertClose(odds.scores, reference(z, pos, neg, 1 / 0.07, true), 1e-4, 'log-odds');

    // The temperature is clamped at 100 as in training.
    const at = model.layout.entries.find((e) => e.name === 'logit_scale')!.offset;
    const hot = params.slice();
    hot[at] = Math.log(500);
    model.assignFlat(hot);
    const c = await zeroShotScores(model, 'heads', 4);
    assert.equal(c.scale, 100);
    assertClose(c.scores, reference(z, pos, neg, 100), 1e-5, 'scale 100');
  } finally {
    model.dispose();
  }
});

test('zero-shot (tower): the prompt rows before the text head, so an untrained head changes nothing', async () => {
  const cfg = config('text', { dim: D, file: true });
  const rp = mulberry32(9);
  const prompts = Float32Array.from({ length: 3 * L * D }, () => rp() * 2 - 1);
  const params = initialParams(cfg, 6);
  const model = new CxrModel(cfg, params, prompts);
  try {
    const z = tf.tidy(() => model.encodeImages(model.pixelsToInput(images, n)).arraySync());
    const row = (k: number) => Array.from(prompts.subarray(k * D, (k + 1) * D));
    const pos = labels.map((_, l) => row(L + l));
    const neg = labels.map((_, l) => row(2 * L + l));
    const before = await zeroShotScores(model, 'tower', 3);
    assertClose(before.scores, reference(z, pos, neg, 1 / 0.07), 1e-5, 'tower');
    const heads = await zeroShotScores(model, 'heads', 3);

    // Another text head: the tower's scores are the same bits, the heads' are not.
    const fc1 = model.layout.entries.find((e) => e.name === 'text.head.fc1.weight')!;
    const other = params.slice();
    for (let i = fc1.offset; i < fc1.offset + fc1.size; i++) other[i] = rp() - 0.5;
    model.assignFlat(other);
    assert.deepEqual((await zeroShotScores(model, 'tower', 3)).scores, before.scores);
    assert.notDeepEqual((await zeroShotScores(model, 'heads', 3)).scores, heads.scores);
  } finally {
    model.dispose();
  }
});

test('zero-shot: a linear head, learnable vectors as a tower, or prompts of another width are refused', async () => {
  const linear = new CxrModel(config('linear'), initialParams(config('linear'), 1));
  const learnable = new CxrModel(config('text', { dim: D }), initialParams(config('text', { dim: D }), 1));
  const narrow = config('text', { dim: 6, file: true });
  const fixed = new CxrModel(narrow, initialParams(narrow, 1), new Float32Array(3 * L * 6).fill(0.5));
  try {
    await assert.rejects(promptPairs(linear, 'heads'), /linear head has no label prompts/);
    await assert.rejects(promptPairs(learnable, 'tower'), /learnable prompt vectors are no text tower/);
    await assert.rejects(promptPairs(fixed, 'tower'), /dimension 6 against image embeddings of 8/);
  } finally {
    for (const m of [linear, learnable, fixed]) m.dispose();
  }
});
