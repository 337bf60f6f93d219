import { UserError } from '../../shared/util/errors.js';
import { type InitWeights, loadInitWeights, openClipTensors, type TorchFormat } from '../../shared/interop/open-clip.js';
import type { TensorOut } from '../../shared/interop/safetensors.js';
import { openStateDict, sha256File } from '../../shared/interop/state-dict.js';
import { buildLayout } from '../../shared/params.js';
import { pretrainedTextSource, readTextTowerParams } from '../text/pretrained.js';
import { textTowerSpecs } from '../text/tower.js';
import { type ModelConfig, type PretrainedSource, resolveModelConfig, type Rgb } from '../config.js';
import { initialParams, modelLayout, textTowerParams } from '../vit.js';
import { type PretrainedDir, readPretrainedDir } from './dir.js';

/**
 * A model configuration shaped by a pretrained directory: the image tower's widths, layers,
 * heads, patch, image size, MLP width, activation, LayerNorm epsilon and ln_pre from its config,
 * the joint dimension from `embed_dim`, the preprocessing from `preprocess_cfg` unless
 * --image-mean/--image-std say otherwise. The dataset's images must have the tower's size (its
 * position embedding has one row per patch).
 */
export function pretrainedModelConfig(
  pre: PretrainedDir,
  opts: {
    imageSize: number;
    labels: string[];
    head?: 'text' | 'linear';
    textEmbeddingsFile?: string | null;
    textDim?: number;
    image?: { mean: Rgb; std: Rgb };
    source: PretrainedSource;
  },
): ModelConfig {
  const v = pre.vision;
  if (opts.imageSize !== v.imageSize)
    throw new UserError(
      `${pre.configFile}: the image tower takes ${v.imageSize}x${v.imageSize} images but the dataset has ${opts.imageSize}x${opts.imageSize}; ` +
        `prepare the data with --size ${v.imageSize}`,
    );
  const image = opts.image ?? { mean: pre.imageMean, std: pre.imageStd };
  return {
    preset: 'pretrained',
    imageSize: v.imageSize,
    patchSize: v.patchSize,
    width: v.width,
    layers: v.layers,
    heads: v.heads,
    embedDim: pre.embedDim,
    pool: v.pool,
    inputNorm: 'fixed',
    imageMean: [...image.mean] as unknown as Rgb,
    imageStd: [...image.std] as unknown as Rgb,
    mlpWidth: v.mlpWidth,
    act: v.act,
    lnEps: v.lnEps,
    lnPre: v.lnPre,
    pretrained: opts.source,
    head: opts.head ?? 'text',
    text: opts.textEmbeddingsFile
      ? { kind: 'file', path: opts.textEmbeddingsFile, dim: opts.textDim ?? 0 }
      : { kind: 'learnable', dim: opts.textDim ?? pre.embedDim },
    labels: [...opts.labels],
  };
}

/** Where DIR's weights are and what they are (sha256 read once, recorded with the run). */
export async function pretrainedSource(pre: PretrainedDir): Promise<PretrainedSource> {
  return { dir: pre.dir, weights: pre.weightsFile, sha256: await sha256File(pre.weightsFile), tower: pre.vision.kind };
}

/** How a configuration's weights are laid out on the PyTorch side (export, import). */
export function torchFormat(c: ModelConfig): TorchFormat {
  return {
    tower: c.pretrained?.tower ?? 'open-clip-vit',
    ...(c.imageMean ? { imageMean: c.imageMean } : {}),
    ...(c.imageStd ? { imageStd: c.imageStd } : {}),
  };
}

/**
 * The initial parameters of a run started from --pretrained: `init` (fresh) with every image-tower
 * tensor and logit_scale read from the weights file (and the text tower's, when the model has it).
 * The towers must be complete in the file; the heads keep their fresh values. The file must still be the one the run recorded.
 */
export async function loadPretrainedParams(c: ModelConfig, init: Float32Array): Promise<InitWeights> {
  const src = await checkedSource(c);
  // The image tower must be in the file (the heads, --visual-head and --text-head, never are: they
  // start fresh), and so must the text tower's part the model holds (--text-tower finetune; a frozen
  // tower's readout under --text-head transformer).
  const text = new Set(textTowerParams(c).map((x) => x.name));
  return loadInitWeights(
    src.weights,
    modelLayout(c),
    init,
    torchFormat(c),
    (name) => (name.startsWith('visual.') && !name.startsWith('visual.head.')) || text.has(name),
  );
}

/** The run's pretrained source, its weights file checked to be the one the run recorded (sha256). */
async function checkedSource(c: ModelConfig): Promise<PretrainedSource> {
  const src = c.pretrained;
  if (!src) throw new Error('model: the configuration has no pretrained source');
  const sha = await sha256File(src.weights).catch((e: NodeJS.ErrnoException) => {
    throw new UserError(`${src.weights}: cannot read the pretrained weights (${e.code ?? e.message})`);
  });
  if (sha !== src.sha256)
    throw new UserError(
      `${src.weights}: sha256 ${sha.slice(0, 12)}... is not the ${src.sha256.slice(0, 12)}... this run was configured with; the file changed`,
    );
  return src;
}

/**
 * The pretrained text tower of a run whose prompts came from it, as the weights file holds it
 * (open_clip's names and PyTorch layouts): what export writes for a frozen tower, which the run
 * never changed, so the exported file is a complete open_clip model again.
 */
export async function pretrainedTextTowerTensors(c: ModelConfig): Promise<TensorOut[]> {
  if (c.text.kind !== 'frozen' && c.text.kind !== 'tower')
    throw new Error('pretrainedTextTowerTensors: the prompts come from no text tower');
  const src = await checkedSource(c);
  const sd = await openStateDict(src.weights);
  try {
    // Read through the layout's checks (every tensor there, of its shape), then back to PyTorch's layouts.
    const params = await readTextTowerParams(c.text.tower, sd);
    const layout = buildLayout(textTowerSpecs(c.text.tower));
    const flat = new Float32Array(layout.total);
    for (const e of layout.entries) flat.set(params.get(e.name)!, e.offset);
    return openClipTensors(layout, flat);
  } finally {
    await sd.close();
  }
}

/**
 * The model configuration of a run: from a --pretrained directory when one is given (the preset
 * is then not used), else from the preset.
 */
export async function modelConfigFor(pretrained: string | null, opts: Parameters<typeof resolveModelConfig>[0]): Promise<ModelConfig> {
  if (!pretrained) return resolveModelConfig(opts);
  const pre = await readPretrainedDir(pretrained);
  return pretrainedModelConfig(pre, { ...opts, source: await pretrainedSource(pre) });
}

/**
 * A model configuration and its initial parameters from a pretrained directory (eval, embed, export
 * without a run). With `textTower`, the label prompts are the directory's text tower's, encoded once
 * (as a run started from DIR has them at step 0: `fixedPrompts`), when its weights hold one.
 */
export async function loadPretrainedModel(
  dir: string,
  opts: { imageSize?: number; labels: string[]; image?: { mean: Rgb; std: Rgb }; textTower?: boolean },
): Promise<{ config: ModelConfig; params: Float32Array; fixedPrompts: Float32Array | null }> {
  const pre = await readPretrainedDir(dir);
  let config = pretrainedModelConfig(pre, {
    imageSize: opts.imageSize ?? pre.vision.imageSize,
    labels: opts.labels,
    ...(opts.image ? { image: opts.image } : {}),
    source: await pretrainedSource(pre),
  });
  const towered = opts.textTower ? await pretrainedTextSource(pre, opts.labels, null) : null;
  if (towered) config = { ...config, text: towered.text };
  const w = await loadPretrainedParams(config, initialParams(config, 0));
  return { config, params: w.params, fixedPrompts: towered?.fixedPrompts ?? null };
}
