import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { type ModelConfig, resolveModelConfig, withTextHead } from '../../model/config.js';
import { CxrModel, fixedPromptShape, initialParams, modelLayout } from '../../model/vit.js';
import { type TextTowerShape, textTowerStates } from '../../model/text/tower.js';
import { groupOptions, lrMultipliers } from '../../model/param-groups.js';
import { computeGradients, localComm, type StepOptions } from '../../worker/steps/forward-backward.js';
import { labelPriorTarget } from '../../model/label-prior.js';
import { loadInitWeights, openClipTensors } from '../../shared/checkpoint/index.js';
import { writeSafetensors } from '../../shared/interop/safetensors.js';
import { mulberry32 } from '../../shared/random/generators.js';
import { UserError } from '../../shared/util/errors.js';

await initBackend('cpu');

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema'];
const base = resolveModelConfig({
  preset: 'tiny',
  imageSize: 16,
  labels,
  overrides: { width: 16, layers: 2, heads: 2, embedDim: 6 },
  textDim: 5,
});
const clip: TextTowerShape = {
  kind: 'clip',
  vocabSize: 32,
  contextLength: 8,
  width: 8,
  heads: 2,
  layers: 1,
  embedDim: 6,
  quickGelu: true,
  prefix: '',
};
const bert: TextTowerShape = {
  kind: 'bert',
  vocabSize: 20,
  contextLength: 8,
  maxPositions: 10,
  typeVocabSize: 2,
  width: 8,
  heads: 2,
  layers: 1,
  intermediate: 16,
  eps: 1e-12,
  padId: 0,
  embedDim: 6,
  pooler: 'mean_pooler',
  proj: 'linear',
};
// Token rows of the 9 prompts: specials, a few tokens, padding (ids below both vocabularies).
const tokens = (tower: TextTowerShape) =>
  Array.from({ length: 9 }, (_, i) =>
    tower.kind === 'clip'
      ? [30, 1 + (i % 7), ...(i % 2 ? [3] : []), 31, ...(i % 2 ? [] : [0])]
      : [2, 5 + (i % 9), 3, ...(i % 3 ? [0] : [7])],
  );
const trained = (tower: TextTowerShape): ModelConfig => ({ ...base, text: { kind: 'tower', dim: 6, tower, tokens: tokens(tower) } });
const frozen = (tower: TextTowerShape): ModelConfig => ({ ...base, text: { kind: 'frozen', dim: 6, tower, tokens: tokens(tower) } });

/** `from`'s parameters copied by name into `to`'s layout (what `to` has beyond them keeps its own). */
function copyByName(from: ModelConfig, params: Float32Array, to: ModelConfig, seed: number): Float32Array {
  const out = initialParams(to, seed);
  const src = modelLayout(from);
  for (const e of modelLayout(to).entries) {
    const s = src.entries.find((x) => x.name === e.name);
    if (s) out.set(params.subarray(s.offset, s.offset + s.size), e.offset);
  }
  return out;
}

const names = (c: ModelConfig) => modelLayout(c).entries.map((e) => e.name);

test('--text-head: none drops text.head.*, transformer adds pre-norm blocks over a tower (a frozen one keeps its readout); bad choices are clear errors', () => {
  assert.deepEqual(withTextHead(base, 'mlp'), base, 'mlp is the text branch as it always was');
  assert.ok(names(base).includes('text.head.fc1.weight'));
  const none = withTextHead({ ...base, text: { kind: 'learnable', dim: 6 } }, 'none');
  assert.deepEqual(
    names(none).filter((n) => n.startsWith('text.')),
    ['text.prompt_embeddings'],
  );
  assert.throws(
    () => withTextHead(base, 'none'),
    (e: Error) => e instanceof UserError && /--text-head none: the prompt embeddings have dimension 5, the joint space 6/.test(e.message),
  );
  assert.throws(
    () => withTextHead(base, 'transformer'),
    (e: Error) => e instanceof UserError && /--text-head transformer .* needs --pretrained DIR with its text tower/.test(e.message),
  );
  assert.throws(() => withTextHead({ ...base, head: 'linear' }, 'none'), /--text-head none: the linear head/);
  assert.throws(() => withTextHead(base, 'lstm'), /--text-head 'lstm': expected one of none, mlp, transformer/);
  assert.throws(() => withTextHead(trained(clip), 'transformer', 0), /--text-head-layers must be a positive integer/);
  // Frozen without the token rows (prompt vectors only) has nothing to attend over.
  assert.throws(() => withTextHead({ ...base, text: { kind: 'frozen', dim: 6, tower: clip } }, 'transformer'), /needs --pretrained DIR/);

  const tr = names(withTextHead(trained(clip), 'transformer', 2));
  assert.equal(tr.filter((n) => n.startsWith('text.head.resblocks.')).length, 24);
  assert.ok(!tr.includes('text.head.fc1.weight'));
  const fr = withTextHead(frozen(bert), 'transformer');
  assert.deepEqual(
    names(fr).filter((n) => !n.startsWith('visual.') && !n.startsWith('text.head.')),
    ['text.proj.weight', 'logit_scale', 'cls.log_scale', 'cls.bias'],
  );
  assert.deepEqual(fixedPromptShape(fr), [9 * 4, 8], 'the frozen tower fixes its last hidden states [3L * T, width]');
  assert.deepEqual(fixedPromptShape(frozen(bert)), [9, 6], 'prompt vectors under the mlp head');
  // The frozen tower's readout is frozen with it; the head trains.
  const layout = modelLayout(fr);
  const scales = lrMultipliers(layout, groupOptions({ lr: 1e-3, resolved: { model: fr } }));
  layout.entries.forEach((e, k) => {
    if (e.name === 'text.proj.weight') assert.equal(scales[k], 0, e.name);
    if (e.name.startsWith('text.head.')) assert.equal(scales[k], 1, e.name);
  });
});

test('--text-head transformer: starts as the identity (the tower embeddings unchanged at step 0, trained or frozen) and trains', async () => {
  const opts: StepOptions = {
    weights: { classification: 1, contrastive: 0.5, labelPrior: 0.1 },
    targets: { uncertainty: ['ignore', 'ignore', 'ignore'], blank: 'mask', seed: 1 },
    posWeight: null,
    priorTarget: labelPriorTarget('orth', labels, null),
  };
  for (const tower of [clip, bert]) {
    const plainCfg = withTextHead(trained(tower), 'none');
    const plain = initialParams(plainCfg, 5);
    const a = new CxrModel(plainCfg, plain);
    const want = tf.tidy(() => tf.concat(Object.values(a.encodeText())).dataSync());
    const headCfg = withTextHead(trained(tower), 'transformer');
    const b = new CxrModel(headCfg, copyByName(plainCfg, plain, headCfg, 6));
    assert.deepEqual(
      tf.tidy(() => tf.concat(Object.values(b.encodeText())).dataSync()),
      want,
      `${tower.kind}: identity at initialisation`,
    );
    // Frozen: the states are the tower's, computed once; the readout is the tower's.
    const states = tf.tidy(() => textTowerStates(a.param, tower, tokens(tower)).dataSync() as Float32Array);
    const frozenCfg = withTextHead(frozen(tower), 'transformer');
    const c = new CxrModel(frozenCfg, copyByName(plainCfg, plain, frozenCfg, 7), states);
    assert.deepEqual(
      tf.tidy(() => tf.concat(Object.values(c.encodeText())).dataSync()),
      want,
      `${tower.kind}: frozen, identity at initialisation`,
    );
    const n = 4;
    const r = mulberry32(3);
    const px = Uint8Array.from({ length: n * 256 }, () => Math.floor(r() * 256));
    const labs = Float32Array.from({ length: n * 3 }, (_, k) => k % 2);
    for (const m of [b, c]) {
      const g = await computeGradients(m, { n, images: px, labels: labs, indices: [0, 1, 2, 3], epoch: 0 }, localComm, opts);
      const e = m.layout.entries.find((x) => x.name === 'text.head.resblocks.0.mlp.c_proj.weight')!;
      assert.ok(
        g.grads.subarray(e.offset, e.offset + e.size).some((x) => x !== 0),
        `${tower.kind}: the head's output weights get a gradient`,
      );
    }
    [a, b, c].forEach((m) => m.dispose());
  }
});

test('--text-head transformer: export names the head text.head.*; --init-weights from a headless file keeps the head fresh', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-thead-'));
  try {
    const plainCfg = withTextHead(trained(clip), 'none');
    const plain = initialParams(plainCfg, 9);
    const cfg = withTextHead(trained(clip), 'transformer');
    const headed = copyByName(plainCfg, plain, cfg, 10);
    const exported = openClipTensors(modelLayout(cfg), headed);
    const inProj = exported.find((t) => t.name === 'text.head.resblocks.0.attn.in_proj_weight')!;
    assert.deepEqual(inProj.shape, [24, 8], 'PyTorch layout, like the tower blocks');
    const file = path.join(dir, 'plain.safetensors');
    await writeSafetensors(file, openClipTensors(modelLayout(plainCfg), plain));
    const fresh = initialParams(cfg, 123);
    const w = await loadInitWeights(file, modelLayout(cfg), fresh);
    assert.ok(w.missing.length > 0 && w.missing.every((n) => n.startsWith('text.head.')), w.missing.join(', '));
    for (const e of modelLayout(cfg).entries)
      assert.deepEqual(
        w.params.subarray(e.offset, e.offset + e.size),
        (e.name.startsWith('text.head.') ? fresh : headed).subarray(e.offset, e.offset + e.size),
        e.name,
      );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
