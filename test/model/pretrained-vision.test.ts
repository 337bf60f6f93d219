import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { l2Normalize } from '../../model/layers.js';
import { readPretrainedDir } from '../../model/pretrained/dir.js';
import { loadPretrainedParams, pretrainedModelConfig, pretrainedSource, torchFormat } from '../../model/pretrained/model.js';
import { CxrModel, initialParams, modelLayout } from '../../model/vit.js';
import { loadInitWeights, openClipTensors } from '../../shared/interop/open-clip.js';
import { writeSafetensors } from '../../shared/interop/safetensors.js';
import { UserError } from '../../shared/util/errors.js';
import { torchReference } from '../helpers/torch.js';

interface Reference {
  size: number;
  images: number[][];
  embeddings: number[][];
}
const labels = ['Atelectasis', 'Cardiomegaly', 'Edema'];

async function embed(dir: string, backend: 'cpu' | 'wasm', ref: Reference) {
  await initBackend(backend);
  const pre = await readPretrainedDir(dir);
  const config = pretrainedModelConfig(pre, { imageSize: ref.size, labels, source: await pretrainedSource(pre) });
  const w = await loadPretrainedParams(config, initialParams(config, 0));
  const model = new CxrModel(config, w.params);
  const pixels = Uint8Array.from(ref.images.flat());
  const out = tf.tidy(() => l2Normalize(model.encodeImages(model.pixelsToInput(pixels, ref.images.length))).arraySync());
  model.dispose();
  return { pre, config, w, out };
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  return Math.max(...a.flatMap((row, i) => row.map((v, j) => Math.abs(v - b[i]![j]!))));
}

for (const variant of ['openai', 'biomedclip', 'timm-avg'] as const) {
  test(`pretrained ${variant}: image embeddings from a torch.save directory equal PyTorch's with the checkpoint's preprocessing (<= 1e-4)`, async (t) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), `cxr-pv-${variant}-`));
    try {
      const ref = torchReference<Reference>('pretrained_vision.py', [dir, variant]);
      if ('skip' in ref) return t.skip(ref.skip);
      for (const backend of ['cpu', 'wasm'] as const) {
        const { config, w, out } = await embed(dir, backend, ref.value);
        const diff = maxAbsDiff(out, ref.value.embeddings);
        t.diagnostic(`${variant} on ${backend}: max abs difference of unit embeddings ${diff.toExponential(2)}`);
        assert.ok(diff <= 1e-4, `${variant} on ${backend}: max abs difference ${diff}`);
        assert.deepEqual(w.unused, [], 'every tensor of the file is used');
        assert.ok(w.loaded.includes('logit_scale'));
        assert.equal(config.act, variant === 'openai' ? 'quick_gelu' : 'gelu');
        assert.equal(config.pretrained?.tower, variant === 'openai' ? 'open-clip-vit' : 'timm-vit');
        assert.equal(config.pool, variant === 'timm-avg' ? 'avg' : 'tok');
        assert.match(config.pretrained?.sha256 ?? '', /^[0-9a-f]{64}$/);
      }

      // Export unfolds the stem and writes the tower's own names: re-imported, the same model to float rounding.
      const { config, w } = await embed(dir, 'cpu', ref.value);
      const layout = modelLayout(config);
      const file = path.join(dir, 'export.safetensors');
      const tensors = openClipTensors(layout, w.params, torchFormat(config));
      if (variant !== 'openai') assert.ok(tensors.some((x) => x.name === 'visual.trunk.patch_embed.proj.bias'));
      else assert.ok(tensors.some((x) => x.name === 'visual.conv1.weight'));
      await writeSafetensors(file, tensors);
      const back = await loadInitWeights(file, layout, new Float32Array(layout.total), torchFormat(config));
      let worst = 0;
      for (let i = 0; i < layout.total; i++)
        worst = Math.max(worst, Math.abs(back.params[i]! - w.params[i]!) / (1 + Math.abs(w.params[i]!)));
      assert.ok(worst < 1e-5, `export -> import relative difference ${worst}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('pretrained: weights that do not fit the config, or a config that names the wrong tower, get one error naming the file and the tensor', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-pv-bad-'));
  try {
    const ref = torchReference<Reference>('pretrained_vision.py', [dir, 'openai']);
    if ('skip' in ref) return t.skip(ref.skip);
    await initBackend('cpu');
    const cfgFile = path.join(dir, 'open_clip_config.json');
    const good = readFileSync(cfgFile, 'utf8');
    const weights = path.join(dir, 'open_clip_pytorch_model.bin');
    const attempt = async (edit: (c: { model_cfg: Record<string, unknown> & { vision_cfg: Record<string, unknown> } }) => void) => {
      const c = JSON.parse(good);
      edit(c);
      writeFileSync(cfgFile, JSON.stringify(c));
      const pre = await readPretrainedDir(dir);
      const config = pretrainedModelConfig(pre, { imageSize: pre.vision.imageSize, labels, source: await pretrainedSource(pre) });
      return loadPretrainedParams(config, initialParams(config, 0));
    };
    await assert.rejects(
      attempt((c) => (c.model_cfg.vision_cfg.width = 128)),
      (e: Error) =>
        e instanceof UserError &&
        e.message.startsWith(`${weights}: tensor 'visual.conv1.weight' has shape [64,3,8,8], this model needs [128,3,8,8]`),
    );
    await assert.rejects(
      attempt((c) => (c.model_cfg.vision_cfg.layers = 3)),
      (e: Error) => e instanceof UserError && e.message.startsWith(`${weights}: no tensor 'visual.transformer.resblocks.2.ln_1.weight'`),
    );
    await assert.rejects(
      attempt(
        (c) =>
          (c.model_cfg.vision_cfg = {
            timm_model_name: 'vit_base_patch16_224',
            timm_pool: '',
            image_size: 32,
            timm_model_kwargs: { embed_dim: 64, depth: 2, num_heads: 2, patch_size: 8 },
          }),
      ),
      (e: Error) =>
        e instanceof UserError &&
        e.message.startsWith(`${weights}: no tensor 'visual.trunk.patch_embed.proj.weight'; a timm ViT (BiomedCLIP) image tower needs it`),
    );
    // The run records the file's sha256: changed weights are refused rather than silently used.
    writeFileSync(cfgFile, good);
    const pre = await readPretrainedDir(dir);
    const config = pretrainedModelConfig(pre, { imageSize: 32, labels, source: await pretrainedSource(pre) });
    writeFileSync(weights, Buffer.concat([readFileSync(weights), Buffer.alloc(1)]));
    await assert.rejects(
      loadPretrainedParams(config, initialParams(config, 0)),
      /open_clip_pytorch_model\.bin: sha256 .* is not the .* this run was configured with/,
    );
    assert.throws(
      () => pretrainedModelConfig(pre, { imageSize: 64, labels, source: config.pretrained! }),
      /open_clip_config\.json: the image tower takes 32x32 images but the dataset has 64x64; prepare the data with --size 32/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
