import { UserError } from '../shared/util/errors.js';
import type { TextTowerShape } from './text/tower.js';

export type ImagePool = 'tok' | 'avg' | 'spatial';
/** Features per patch token in the `spatial` readout. */
export const SPATIAL_RANK = 16;
/**
 * What the stem sees. `fixed`: (p/255 - 0.5) / 0.25, an affine map of the pixels that folds exactly
 * into open_clip's RGB normalisation (docs/model.md), so CLIP/BiomedCLIP weights load. `image`:
 * every image standardised to mean 0, variance 1 over its own pixels, which takes exposure and
 * contrast (the gain and offset that differ between studies) out of what a model trained from
 * scratch must learn.
 */
export type InputNorm = 'fixed' | 'image';
export type ModelPreset = 'tiny' | 'small' | 'vit-b16';
export const MODEL_PRESETS: readonly ModelPreset[] = ['tiny', 'small', 'vit-b16'];
/** Per-channel (R, G, B) values of an RGB preprocessing. */
export type Rgb = readonly [number, number, number];
/** CLIP's preprocessing (OpenAI; also BiomedCLIP's), the default of the pretrained-shaped presets. */
export const CLIP_MEAN: Rgb = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: Rgb = [0.26862954, 0.26130258, 0.27577711];

/** Where a model's initial weights came from (`--pretrained DIR`): recorded in model.json and checkpoints. */
export interface PretrainedSource {
  dir: string;
  /** The weights file read, and its sha256. */
  weights: string;
  sha256: string;
  /** Which image tower the weights are: open_clip's VisionTransformer or a timm ViT (BiomedCLIP). */
  tower: 'open-clip-vit' | 'timm-vit';
}

/**
 * Where the label prompts' embeddings come from: trained from scratch, a fixed file, or a
 * pretrained text tower. `frozen`: the tower encoded the prompts once at start, and the vectors
 * are fixed like a file's (stored with the model); `tower`: the tower is part of the model, its
 * weights in the layout under open_clip's names, and runs on the prompts' token rows (`tokens`,
 * cut to the longest prompt) in every step (--text-tower finetune). A frozen tower under
 * `--text-head transformer` fixes the last hidden states of its prompts' token rows (`tokens`)
 * instead of the vectors, and the model holds the tower's readout (final norm, pooling,
 * projection; frozen) to apply after the head.
 */
export type TextSource =
  | { kind: 'learnable'; dim: number }
  | { kind: 'file'; path: string; dim: number }
  | { kind: 'frozen'; dim: number; tower: TextTowerShape; tokens?: number[][] }
  | { kind: 'tower'; dim: number; tower: TextTowerShape; tokens: number[][] };

/** --text-tower: a pretrained text tower's prompt vectors computed once (frozen) or the tower trained with the rest (finetune). */
export type TextTowerMode = 'frozen' | 'finetune';
export const TEXT_TOWER_MODES: readonly TextTowerMode[] = ['frozen', 'finetune'];

export interface ModelConfig {
  /** The --model preset, or `pretrained` when the shape came from a --pretrained directory's config. */
  preset: ModelPreset | 'pretrained';
  imageSize: number;
  patchSize: number;
  width: number;
  layers: number;
  heads: number;
  /** Joint image-text embedding dimension (open_clip's `embed_dim`). */
  embedDim: number;
  /**
   * Image readout: `tok` reads the class token (CLIP's ViTs, open_clip `pool_type='tok'`), `avg` the
   * mean of the patch tokens after ln_post (`pool_type='avg'`), `spatial` a position-aware linear
   * map of the patch tokens after ln_post (each token reduced to `spatialRank` features by one
   * shared matrix, the whole grid of them mapped to the width; its own parameters
   * `visual.spatial_pool.*`). A missing value (model.json written before the option existed)
   * means `tok`.
   */
  pool?: ImagePool;
  /** Features per patch token of the `spatial` readout (present exactly when pool is `spatial`). */
  spatialRank?: number;
  /** Stem input normalisation; a missing value (model.json written before the option existed) means `fixed`. */
  inputNorm?: InputNorm;
  /**
   * The RGB preprocessing the imported or exported weights expect, `(p/255 - mean_c) / std_c` on a
   * gray image replicated to three channels (`--image-mean`, `--image-std`). With `fixed` input the
   * stem computes exactly that: import folds it into the one-channel kernel and the patch rows of
   * the position embedding, export unfolds it (docs/model.md). Missing means 0.5 / 0.25 on every
   * channel, the stem's own input, where the fold is the identity.
   */
  imageMean?: Rgb;
  imageStd?: Rgb;
  /** MLP hidden width; missing means 4 x width. */
  mlpWidth?: number;
  /** MLP activation: exact GELU (missing) or QuickGELU, x sigmoid(1.702 x) (OpenAI's CLIP weights). */
  act?: 'gelu' | 'quick_gelu';
  /** LayerNorm epsilon; missing means open_clip's 1e-5 (timm's ViTs use 1e-6). */
  lnEps?: number;
  /** Whether ln_pre follows the position embedding (open_clip's ViTs); missing means true. timm's ViTs have none. */
  lnPre?: boolean;
  /** The --pretrained weights the run started from. */
  pretrained?: PretrainedSource;
  /**
   * Initial std of the learned position embedding; a missing value means open_clip's width^-0.5.
   * Initialisation only: a saved model does not depend on it.
   */
  posInitStd?: number;
  /**
   * `text`: classify by cosine similarity to the label text embeddings (the text branch);
   * `linear`: the visual-only baseline, a plain linear classifier on the image embedding.
   */
  head: 'text' | 'linear';
  /**
   * A trainable block on the image tower's output (`--visual-head`): `mlp` a residual MLP on the
   * image embedding in the joint space, `transformer` `visualHeadLayers` pre-norm blocks of the
   * tower's width over every token after the tower's last block. Missing means none. Its
   * parameters are `visual.head.*`, which no pretrained file has, so they start fresh.
   */
  visualHead?: VisualHead;
  visualHeadLayers?: number;
  /**
   * The trainable block between the prompt embeddings and the joint space (`--text-head`):
   * missing means `mlp`, a residual MLP from the prompt embeddings' dimension to the joint one
   * (`text.head.fc1/fc2`); `none` the prompt embeddings as they are (their dimension must be the
   * joint one); `transformer` `textHeadLayers` pre-norm blocks of a text tower's width over its
   * token states before its readout (`text.head.resblocks.N`, model/text/tower.ts).
   */
  textHead?: TextHead;
  textHeadLayers?: number;
  text: TextSource;
  labels: string[];
}

/** The heads either tower may have (`--visual-head`, `--text-head`). */
const HEADS = ['none', 'mlp', 'transformer'] as const;
export const VISUAL_HEADS = HEADS;
export type VisualHead = Exclude<(typeof VISUAL_HEADS)[number], 'none'>;

/** Refuses a `--TOWER-head KIND --TOWER-head-layers N` that names no head or no block count. */
export function checkHead(tower: 'visual' | 'text', kind: string, layers: number): void {
  if (!(HEADS as readonly string[]).includes(kind)) throw new UserError(`--${tower}-head '${kind}': expected one of ${HEADS.join(', ')}`);
  if (!Number.isInteger(layers) || layers < 1) throw new UserError(`--${tower}-head-layers must be a positive integer, got ${layers}`);
}

/** `config` with the visual head of `--visual-head KIND --visual-head-layers N` (none: as it is). */
export function withVisualHead(config: ModelConfig, kind: string, layers = 1): ModelConfig {
  checkHead('visual', kind, layers);
  if (kind === 'none') return config;
  return { ...config, visualHead: kind as VisualHead, ...(kind === 'transformer' ? { visualHeadLayers: layers } : {}) };
}

export const TEXT_HEADS = HEADS;
export type TextHead = Exclude<(typeof TEXT_HEADS)[number], 'mlp'>;

/**
 * `config` with the text head of `--text-head KIND --text-head-layers N` (mlp: as it is). Apply it
 * once the prompts' source is known: `none` needs prompt embeddings of the joint dimension,
 * `transformer` a text tower's token states (a pretrained tower, frozen with `tokens` or finetuned).
 */
export function withTextHead(config: ModelConfig, kind: string, layers = 1): ModelConfig {
  checkHead('text', kind, layers);
  if (kind === 'mlp') return config;
  if (config.head !== 'text') throw new UserError(`--text-head ${kind}: the linear head (--head linear) has no text branch`);
  const t = config.text;
  if (kind === 'transformer' && !(t.kind === 'tower' || (t.kind === 'frozen' && t.tokens)))
    throw new UserError(
      `--text-head transformer attends over a text tower's tokens: it needs --pretrained DIR with its text tower (--text-tower frozen or finetune), ` +
        `not ${t.kind === 'file' ? '--text-embeddings' : 'learnable prompts'}`,
    );
  if (t.dim !== config.embedDim)
    throw new UserError(
      `--text-head ${kind}: the prompt embeddings have dimension ${t.dim}, the joint space ${config.embedDim}; --text-head mlp maps one to the other`,
    );
  return { ...config, textHead: kind as TextHead, ...(kind === 'transformer' ? { textHeadLayers: layers } : {}) };
}

interface PresetShape {
  imageSize: number | null;
  patchSize: number;
  width: number;
  layers: number;
  heads: number;
  embedDim: number;
  pool: ImagePool;
  inputNorm: InputNorm;
  /** null: open_clip's width^-0.5. */
  posInitStd: number | null;
  /** RGB preprocessing of weights imported into or exported from the preset; null: the stem's own 0.5 / 0.25. */
  image: { mean: Rgb; std: Rgb } | null;
}

/**
 * `tiny`/`small` take their image size from the dataset (any multiple of the patch size);
 * `vit-b16` is open_clip ViT-B-16 exactly (224 px, patch 16, width 768, 12 layers, 12 heads,
 * embed dim 512), so its visual weights can be loaded by name.
 * The CPU presets are tuned to learn from scratch in a few hundred steps (docs/results.md, the
 * synthetic ablations). Many signs are only signs at their place (a dark lung apex is a
 * pneumothorax, a dark corner is air; a bright band at the chest wall is pleural, one over the
 * mediastinum is not), so they read out with the position-aware `spatial` map instead of a pooled
 * token, standardise each image (exposure and contrast vary between studies), and start the
 * position embedding at std 1 rather than width^-0.5 (so tokens carry their place at a scale that
 * survives the patch content). `vit-b16` keeps open_clip's choices so its weights load.
 */
const PRESETS: Record<ModelPreset, PresetShape> = {
  tiny: {
    imageSize: null,
    patchSize: 8,
    width: 128,
    layers: 4,
    heads: 4,
    embedDim: 128,
    pool: 'spatial',
    inputNorm: 'image',
    posInitStd: 1,
    image: null,
  },
  small: {
    imageSize: null,
    patchSize: 8,
    width: 256,
    layers: 6,
    heads: 8,
    embedDim: 256,
    pool: 'spatial',
    inputNorm: 'image',
    posInitStd: 1,
    image: null,
  },
  'vit-b16': {
    imageSize: 224,
    patchSize: 16,
    width: 768,
    layers: 12,
    heads: 12,
    embedDim: 512,
    pool: 'tok',
    inputNorm: 'fixed',
    posInitStd: null,
    image: { mean: CLIP_MEAN, std: CLIP_STD },
  },
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
  /** --image-mean / --image-std: the RGB preprocessing of imported and exported weights (both or neither). */
  image?: { mean: Rgb; std: Rgb };
}): ModelConfig {
  const preset = PRESETS[opts.preset as ModelPreset];
  if (!preset) throw new UserError(`--model '${opts.preset}' is not one of ${MODEL_PRESETS.join(', ')}`);
  const p: PresetShape = { ...preset, ...opts.overrides };
  if (p.width % p.heads !== 0) throw new UserError(`model width ${p.width} is not a multiple of ${p.heads} heads`);
  if (p.imageSize !== null && p.imageSize !== opts.imageSize)
    throw new UserError(
      `--model ${opts.preset} needs ${p.imageSize}x${p.imageSize} images but the dataset has ${opts.imageSize}x${opts.imageSize}; ` +
        `prepare the data with --image-size ${p.imageSize}`,
    );
  if (opts.imageSize % p.patchSize !== 0)
    throw new UserError(`--model ${opts.preset}: image size ${opts.imageSize} is not a multiple of the patch size ${p.patchSize}`);
  const image = opts.image ?? p.image;
  if (image) checkRgb(image);
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
    ...(p.pool === 'spatial' ? { spatialRank: SPATIAL_RANK } : {}),
    inputNorm: p.inputNorm,
    ...(image ? { imageMean: [...image.mean] as unknown as Rgb, imageStd: [...image.std] as unknown as Rgb } : {}),
    ...(p.posInitStd !== null ? { posInitStd: p.posInitStd } : {}),
    head: opts.head ?? 'text',
    text,
    labels: [...opts.labels],
  };
}

export function tokenCount(c: ModelConfig): number {
  return (c.imageSize / c.patchSize) ** 2 + 1;
}

/** Refuses a preprocessing that is not three finite means and three positive stds. */
export function checkRgb(image: { mean: readonly number[]; std: readonly number[] }): void {
  if (image.mean.length !== 3 || !image.mean.every(Number.isFinite))
    throw new UserError(`--image-mean needs three numbers (R G B), got ${JSON.stringify(image.mean)}`);
  if (image.std.length !== 3 || !image.std.every((x) => Number.isFinite(x) && x > 0))
    throw new UserError(`--image-std needs three positive numbers (R G B), got ${JSON.stringify(image.std)}`);
}

/** The MLP hidden width of a configuration. */
export function mlpWidth(c: ModelConfig): number {
  return c.mlpWidth ?? 4 * c.width;
}
