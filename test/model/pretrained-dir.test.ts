import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CLIP_MEAN, CLIP_STD } from '../../model/config.js';
import { readPretrainedDir } from '../../model/pretrained/dir.js';
import { UserError } from '../../shared/util/errors.js';

/** BiomedCLIP's open_clip_config.json as the hub ships it. */
const BIOMEDCLIP = {
  model_cfg: {
    embed_dim: 512,
    vision_cfg: {
      timm_model_name: 'vit_base_patch16_224',
      timm_model_pretrained: false,
      timm_pool: '',
      timm_proj: 'linear',
      image_size: 224,
    },
    text_cfg: {
      hf_model_name: 'microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract',
      hf_tokenizer_name: 'microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract',
      proj: 'mlp',
      pooler_type: 'cls_last_hidden_state_pooler',
      context_length: 256,
    },
  },
  preprocess_cfg: { mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711] },
};
/** OpenAI CLIP ViT-B/16 (timm/vit_base_patch16_clip_224.openai). */
const CLIP_B16 = {
  model_cfg: {
    embed_dim: 512,
    quick_gelu: true,
    vision_cfg: { image_size: 224, layers: 12, width: 768, patch_size: 16 },
    text_cfg: { context_length: 77, vocab_size: 49408, width: 512, heads: 8, layers: 12 },
  },
  preprocess_cfg: { mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711] },
};

function makeDir(config: unknown, files: string[]): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-pre-'));
  if (config !== undefined) writeFileSync(path.join(dir, 'open_clip_config.json'), JSON.stringify(config));
  for (const f of files) writeFileSync(path.join(dir, f), '');
  return dir;
}

test('pretrained dir: the hub configs of CLIP ViT-B/16 and BiomedCLIP decide the image tower', async () => {
  const a = makeDir(CLIP_B16, ['open_clip_pytorch_model.bin', 'open_clip_model.safetensors', 'model.safetensors']);
  const b = makeDir(BIOMEDCLIP, ['open_clip_pytorch_model.bin', 'vocab.txt']);
  try {
    const clip = await readPretrainedDir(a);
    assert.equal(clip.weightsFile, path.join(a, 'open_clip_model.safetensors'));
    assert.deepEqual(clip.vision, {
      kind: 'open-clip-vit',
      imageSize: 224,
      patchSize: 16,
      width: 768,
      layers: 12,
      heads: 12,
      mlpWidth: 3072,
      lnEps: 1e-5,
      lnPre: true,
      act: 'quick_gelu',
      pool: 'tok',
    });
    assert.equal(clip.embedDim, 512);
    assert.deepEqual(clip.imageMean, CLIP_MEAN);
    assert.deepEqual(clip.textCfg, CLIP_B16.model_cfg.text_cfg);
    const bio = await readPretrainedDir(b);
    assert.equal(bio.weightsFile, path.join(b, 'open_clip_pytorch_model.bin'));
    assert.deepEqual(bio.vision, {
      kind: 'timm-vit',
      timmModelName: 'vit_base_patch16_224',
      imageSize: 224,
      patchSize: 16,
      width: 768,
      layers: 12,
      heads: 12,
      mlpWidth: 3072,
      lnEps: 1e-6,
      lnPre: false,
      act: 'gelu',
      pool: 'tok',
    });
    assert.deepEqual(bio.imageStd, CLIP_STD);
  } finally {
    rmSync(a, { recursive: true, force: true });
    rmSync(b, { recursive: true, force: true });
  }
});

test('pretrained dir: a malformed directory gets one error naming the file and what is wrong', async () => {
  const cases: [unknown, string[], RegExp][] = [
    [undefined, ['open_clip_pytorch_model.bin'], /open_clip_config\.json: missing/],
    [CLIP_B16, ['vocab.txt'], /no weights file; expected open_clip_model\.safetensors or open_clip_pytorch_model\.bin/],
    [CLIP_B16, ['a.bin', 'b.pt'], /several weights files \(a\.bin, b\.pt\)/],
    [
      { model_cfg: { ...CLIP_B16.model_cfg, embed_dim: '512' } },
      ['w.bin'],
      /open_clip_config\.json: model_cfg\.embed_dim must be a positive integer/,
    ],
    [{ ...CLIP_B16, preprocess_cfg: { mean: [0.5, 0.5] } }, ['w.bin'], /preprocess_cfg\.mean must be three numbers/],
    [
      { model_cfg: { ...CLIP_B16.model_cfg, vision_cfg: { layers: [3, 4, 6, 3], width: 64 } } },
      ['w.bin'],
      /model_cfg\.vision_cfg\.layers is a list \(a ModifiedResNet image tower\)/,
    ],
    [
      { model_cfg: { ...BIOMEDCLIP.model_cfg, vision_cfg: { timm_model_name: 'convnext_base' } } },
      ['w.bin'],
      /vision_cfg\.timm_model_name is 'convnext_base', not a timm ViT/,
    ],
    [
      { model_cfg: { ...BIOMEDCLIP.model_cfg, vision_cfg: { timm_model_name: 'vit_base_patch16_224', timm_pool: 'max' } } },
      ['w.bin'],
      /vision_cfg\.timm_pool is 'max'; the class token \('' or 'token', as BiomedCLIP\) and 'avg' are read/,
    ],
    [
      {
        model_cfg: {
          ...BIOMEDCLIP.model_cfg,
          vision_cfg: { timm_model_name: 'vit_base_patch16_224', timm_pool: 'avg', timm_model_kwargs: { global_pool: 'avg' } },
        },
      },
      ['w.bin'],
      /vision_cfg\.timm_model_kwargs\.global_pool is set; only embed_dim, depth, num_heads, patch_size, img_size, mlp_ratio and dropout rates are read/,
    ],
    [
      { model_cfg: { ...BIOMEDCLIP.model_cfg, vision_cfg: { timm_model_name: 'vit_base_patch16_clip_224' } } },
      ['w.bin'],
      /vision_cfg\.timm_model_name is 'vit_base_patch16_clip_224', a timm CLIP ViT \(pre-norm, eps 1e-5\)/,
    ],
  ];
  for (const [config, files, want] of cases) {
    const dir = makeDir(config, files);
    try {
      await assert.rejects(readPretrainedDir(dir), (e: Error) => e instanceof UserError && want.test(e.message) && e.message.includes(dir));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  await assert.rejects(readPretrainedDir('/nonexistent/cxr'), /--pretrained \/nonexistent\/cxr: cannot read the directory \(ENOENT\)/);
});
