import { UserError } from '../../shared/errors.js';

export type ImagePool = 'tok' | 'avg';
export type ModelPreset = 'tiny' | 'small' | 'vit-b16';
export const MODEL_PRESETS: readonly ModelPreset[] = ['tiny', 'small', 'vit-b16'];

/** Where the label prompts' embeddings come from: trained from scratch, or a fixed file. */
export type TextSource = { kind: 'learnable'; dim: number } | { kind: 'file'; path: string; dim: number };

export interface ModelConfig {
  preset: ModelPreset;
  imageSize: number;
  patchSize: number;
  width: number;
  layers: number;
  heads: number;
  /** Joint image-text embedding dimension (open_clip's `embed_dim`). */
  embedDim: number;
  /**
   * Image readout, open_clip's `pool_type`: `tok` reads the class token (CLIP's ViTs), `avg` the
   * mean of the patch tokens after ln_post. A missing value (model.json written before the option
   * existed) means `tok`.
   */
  pool?: ImagePool;
  /**
   * `text`: classify by cosine similarity to the label text embeddings (the text branch);
   * `linear`: the visual-only baseline, a plain linear classifier on the image embedding.
   */
  head: 'text' | 'linear';
  text: TextSource;
  labels: string[];
}

interface PresetShape {
  imageSize: number | null;
  patchSize: number;
  width: number;
  layers: number;
  heads: number;
  embedDim: number;
  pool: ImagePool;
}

/**
 * `tiny`/`small` take their image size from the dataset (any multiple of the patch size);
 * `vit-b16` is open_clip ViT-B-16 exactly (224 px, patch 16, width 768, 12 layers, 12 heads,
 * embed dim 512), so its visual weights can be loaded by name.
 * The CPU presets pool by averaging the patch tokens: trained from scratch for a few hundred steps,
 * a class-token readout must first learn to attend to the one patch that holds a small sign, and
 * it does not in 3 epochs of 3,000 synthetic images (docs/results.md); the mean gives every patch
 * a direct gradient path. The parameters are the same either way.
 */
const PRESETS: Record<ModelPreset, PresetShape> = {
  tiny: { imageSize: null, patchSize: 8, width: 128, layers: 4, heads: 4, embedDim: 128, pool: 'avg' },
  small: { imageSize: null, patchSize: 8, width: 256, layers: 6, heads: 8, embedDim: 256, pool: 'avg' },
  'vit-b16': { imageSize: 224, patchSize: 16, width: 768, layers: 12, heads: 12, embedDim: 512, pool: 'tok' },
};

export function resolveModelConfig(opts: {
  preset: string;
  imageSize: number;
  labels: string[];
  head?: 'text' | 'linear';
  textEmbeddingsFile?: string | null;
  textDim?: number;
  /** Shape changes for tests and experiments (the preset name is kept for the record). */
  overrides?: Partial<Omit<PresetShape, 'imageSize'>>;
}): ModelConfig {
  const preset = PRESETS[opts.preset as ModelPreset];
  if (!preset) throw new UserError(`--model '${opts.preset}' is not one of ${MODEL_PRESETS.join(', ')}`);
  const p: PresetShape = { ...preset, ...opts.overrides };
  if (p.width % p.heads !== 0) throw new UserError(`model width ${p.width} is not a multiple of ${p.heads} heads`);
  if (p.imageSize !== null && p.imageSize !== opts.imageSize)
    throw new UserError(
      `--model ${opts.preset} needs ${p.imageSize}x${p.imageSize} images but the dataset has ${opts.imageSize}x${opts.imageSize}; ` +
        `prepare the data with --size ${p.imageSize}`,
    );
  if (opts.imageSize % p.patchSize !== 0)
    throw new UserError(`--model ${opts.preset}: image size ${opts.imageSize} is not a multiple of the patch size ${p.patchSize}`);
  const text: TextSource = opts.textEmbeddingsFile
    ? { kind: 'file', path: opts.textEmbeddingsFile, dim: opts.textDim ?? 0 }
    : { kind: 'learnable', dim: opts.textDim ?? p.embedDim };
  return {
    preset: opts.preset as ModelPreset,
    imageSize: opts.imageSize,
    patchSize: p.patchSize,
    width: p.width,
    layers: p.layers,
    heads: p.heads,
    embedDim: p.embedDim,
    pool: p.pool,
    head: opts.head ?? 'text',
    text,
    labels: [...opts.labels],
  };
}

export function tokenCount(c: ModelConfig): number {
  return (c.imageSize / c.patchSize) ** 2 + 1;
}
