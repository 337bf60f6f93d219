import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { resolveModelConfig, withVisualHead } from '../../model/config.js';
import { CxrModel, initialParams, modelLayout } from '../../model/vit.js';
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
  overrides: { width: 16, layers: 2, heads: 2, embedDim: 8 },
  textDim: 6,
});

/** The headless model's parameters copied by name into a model with a head (the head keeps its own). */
function withTower(headCfg: typeof base, seed: number): { plain: Float32Array; headed: Float32Array } {
  const plain = initialParams(base, seed);
  const headed = initialParams(headCfg, seed + 1);
  const from = modelLayout(base);
  const to = modelLayout(headCfg);
  for (const e of from.entries) {
    const t = to.entries.find((x) => x.name === e.name)!;
    headed.set(plain.subarray(e.offset, e.offset + e.size), t.offset);
  }
  return { plain, headed };
}

const images = (n: number) => {
  const r = mulberry32(3);
  return Uint8Array.from({ length: n * 256 }, () => Math.floor(r() * 256));
};

test('--visual-head: mlp and transformer add visual.head.* parameters; a bad choice is a clear error', () => {
  const names = (c: typeof base) => modelLayout(c).entries.map((e) => e.name);
  assert.deepEqual(withVisualHead(base, 'none'), base);
  const mlp = modelLayout(withVisualHead(base, 'mlp'));
  assert.deepEqual(
    mlp.entries.filter((e) => e.name.startsWith('visual.head.')).map((e) => [e.name, e.shape]),
    [
      ['visual.head.fc1.weight', [8, 8]],
      ['visual.head.fc1.bias', [8]],
      ['visual.head.fc2.weight', [8, 8]],
      ['visual.head.fc2.bias', [8]],
    ],
  );
  const tr = names(withVisualHead(base, 'transformer', 2)).filter((n) => n.startsWith('visual.head.'));
  assert.equal(tr.length, 24);
  assert.ok(tr.includes('visual.head.resblocks.1.attn.in_proj_weight'));
  // The head sits between the tower's last block and ln_post.
  const all = names(withVisualHead(base, 'transformer'));
  assert.ok(all.indexOf('visual.head.resblocks.0.ln_1.weight') > all.indexOf('visual.transformer.resblocks.1.mlp.c_proj.bias'));
  assert.ok(all.indexOf('visual.head.resblocks.0.mlp.c_proj.bias') < all.indexOf('visual.ln_post.weight'));
  assert.throws(
    () => withVisualHead(base, 'conv'),
    (e: Error) => e instanceof UserError && /--visual-head 'conv'/.test(e.message),
  );
  assert.throws(() => withVisualHead(base, 'transformer', 0), /--visual-head-layers must be a positive integer/);
});

test('--visual-head: starts as the identity (the tower embeddings unchanged at step 0) and trains (gradient into its output weights)', async () => {
  const opts: StepOptions = {
    weights: { classification: 1, contrastive: 0.5, labelPrior: 0.1 },
    targets: { uncertainty: ['ignore', 'ignore', 'ignore'], blank: 'mask', seed: 1 },
    posWeight: null,
    priorTarget: labelPriorTarget('orth', labels, null),
  };
  for (const [kind, out] of [
    ['mlp', 'visual.head.fc2.weight'],
    ['transformer', 'visual.head.resblocks.0.mlp.c_proj.weight'],
  ] as const) {
    const cfg = withVisualHead(base, kind);
    const { plain, headed } = withTower(cfg, 5);
    const a = new CxrModel(base, plain);
    const b = new CxrModel(cfg, headed);
    const n = 4;
    const px = images(n);
    const za = tf.tidy(() => a.encodeImages(a.pixelsToInput(px, n)).dataSync());
    const zb = tf.tidy(() => b.encodeImages(b.pixelsToInput(px, n)).dataSync());
    assert.deepEqual(zb, za, `${kind}: identity at initialisation`);
    const labs = Float32Array.from({ length: n * 3 }, (_, k) => k % 2);
    const g = await computeGradients(b, { n, images: px, labels: labs, indices: [0, 1, 2, 3], epoch: 0 }, localComm, opts);
    const e = b.layout.entries.find((x) => x.name === out)!;
    assert.ok(
      g.grads.subarray(e.offset, e.offset + e.size).some((x) => x !== 0),
      `${kind}: ${out} gets a gradient`,
    );
    a.dispose();
    b.dispose();
  }
});

test('--visual-head: export names the head; --init-weights from a headless file keeps the head fresh', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-vhead-'));
  try {
    const cfg = withVisualHead(base, 'transformer');
    const { plain, headed } = withTower(cfg, 9);
    const exported = openClipTensors(modelLayout(cfg), headed);
    const inProj = exported.find((t) => t.name === 'visual.head.resblocks.0.attn.in_proj_weight')!;
    assert.deepEqual(inProj.shape, [48, 16], 'PyTorch layout, like the tower blocks');
    const file = path.join(dir, 'plain.safetensors');
    await writeSafetensors(file, openClipTensors(modelLayout(base), plain));
    const fresh = initialParams(cfg, 123);
    const w = await loadInitWeights(file, modelLayout(cfg), fresh);
    assert.ok(w.missing.length > 0 && w.missing.every((n) => n.startsWith('visual.head.')), w.missing.join(', '));
    for (const e of modelLayout(cfg).entries)
      assert.deepEqual(
        w.params.subarray(e.offset, e.offset + e.size),
        (e.name.startsWith('visual.head.') ? fresh : headed).subarray(e.offset, e.offset + e.size),
        e.name,
      );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
