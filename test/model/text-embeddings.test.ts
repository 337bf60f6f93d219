import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { loadTextEmbeddings } from '../../model/text-embeddings.js';
import { resolveModelConfig } from '../../model/config.js';
import { CxrModel, initialParams, labelPrompts, modelLayout } from '../../model/vit.js';
import { UserError } from '../../shared/util/errors.js';

await tf.setBackend('cpu');

test('--text-embeddings: prompts keyed by text, fixed (not trained) rows in model order, errors name the prompt', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-text-'));
  try {
    const labels = ['Edema', 'Pleural_Thickening'];
    assert.deepEqual(labelPrompts(labels), [
      'Edema',
      'Pleural Thickening',
      'Positive Edema',
      'Positive Pleural Thickening',
      'Negative Edema',
      'Negative Pleural Thickening',
    ]);
    const vectors = Object.fromEntries(labelPrompts(labels).map((p, i) => [p, [i, i + 0.5, -i]]));
    const file = path.join(dir, 'text.json');
    await writeFile(file, JSON.stringify({ dim: 3, vectors }));
    const t = loadTextEmbeddings(file, labels);
    assert.equal(t.dim, 3);
    assert.deepEqual(Array.from(t.vectors.subarray(3, 6)), [1, 1.5, -1]);
    const cfg = resolveModelConfig({
      preset: 'tiny',
      imageSize: 16,
      labels,
      textEmbeddingsFile: file,
      textDim: 3,
      overrides: { width: 8, layers: 1, heads: 2, embedDim: 4 },
    });
    assert.ok(!modelLayout(cfg).entries.some((e) => e.name === 'text.prompt_embeddings'), 'fixed prompts are not parameters');
    assert.deepEqual(modelLayout(cfg).entries.find((e) => e.name === 'text.head.fc1.weight')?.shape, [3, 4]);
    const model = new CxrModel(cfg, initialParams(cfg, 1), t.vectors);
    const names = tf.tidy(() => model.encodeText().names.shape);
    assert.deepEqual(names, [2, 4]);
    model.dispose();

    delete vectors['Negative Pleural Thickening'];
    await writeFile(file, JSON.stringify({ dim: 3, vectors }));
    assert.throws(
      () => loadTextEmbeddings(file, labels),
      (e: unknown) => e instanceof UserError && /no vector for prompt 'Negative Pleural Thickening'/.test(e.message),
    );
    await writeFile(file, JSON.stringify({ dim: 2, vectors: { Edema: [1, 2, 3] } }));
    assert.throws(() => loadTextEmbeddings(file, labels), /'Edema' has 3 numbers, 'dim' says 2/);
    await writeFile(file, '{not json');
    assert.throws(() => loadTextEmbeddings(file, labels), /cannot read JSON/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
