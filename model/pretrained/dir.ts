import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../shared/util/errors.js';
import { CLIP_MEAN, CLIP_STD } from '../config.js';

/**
 * A pretrained model directory as open_clip and the model hub lay it out: `open_clip_config.json`
 * (`model_cfg.{embed_dim, quick_gelu, vision_cfg, text_cfg}`, `preprocess_cfg.{mean, std}`), the
 * weights (`open_clip_model.safetensors`, else `open_clip_pytorch_model.bin`, else the one
 * state-dict file in the directory) and the tokenizer files (read by the text side).
 * This module reads the config and decides the image tower; it reads no tensor.
 */
export const OPEN_CLIP_CONFIG = 'open_clip_config.json';
/** The weights open_clip's hub loader looks for, in its order of preference. */
export const OPEN_CLIP_WEIGHTS = ['open_clip_model.safetensors', 'open_clip_pytorch_model.bin'] as const;
const STATE_DICT_EXT = /\.(safetensors|bin|pt|pth)$/;

/**
 * The image tower a config describes. `open-clip-vit`: open_clip's VisionTransformer (names
 * `visual.conv1.weight`, `visual.transformer.resblocks.N.*`, ...). `timm-vit`: a timm
 * VisionTransformer wrapped by open_clip's TimmModel (`visual.trunk.*`, `visual.head.proj.weight`),
 * as in BiomedCLIP.
 */
export interface VisionSpec {
  readonly kind: 'open-clip-vit' | 'timm-vit';
  readonly timmModelName?: string;
  readonly imageSize: number;
  readonly patchSize: number;
  readonly width: number;
  readonly layers: number;
  readonly heads: number;
  readonly mlpWidth: number;
  /** LayerNorm epsilon: 1e-5 in open_clip, 1e-6 in timm's ViTs. */
  readonly lnEps: number;
  /** open_clip's ln_pre after the position embedding (timm's ViTs have none). */
  readonly lnPre: boolean;
  /** QuickGELU (x sigmoid(1.702 x), OpenAI's weights) or exact GELU. timm towers always use GELU. */
  readonly act: 'gelu' | 'quick_gelu';
  /** Readout: the class token, or the mean of the patch tokens (open_clip `pool_type`). */
  readonly pool: 'tok' | 'avg';
}

export interface PretrainedDir {
  readonly dir: string;
  readonly configFile: string;
  readonly weightsFile: string;
  /** Joint image-text dimension (`model_cfg.embed_dim`). */
  readonly embedDim: number;
  readonly quickGelu: boolean;
  readonly imageMean: readonly [number, number, number];
  readonly imageStd: readonly [number, number, number];
  readonly vision: VisionSpec;
  /** `model_cfg.text_cfg` as written; the text towers interpret it. */
  readonly textCfg: Readonly<Record<string, unknown>>;
  /** The whole config file, for fields this reader does not interpret. */
  readonly raw: Readonly<Record<string, unknown>>;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Reads DIR's config and finds its weights file; every problem is one UserError naming the file and field. */
export async function readPretrainedDir(dir: string): Promise<PretrainedDir> {
  const root = path.resolve(dir);
  let names: string[];
  try {
    names = await fsp.readdir(root);
  } catch (e) {
    throw new UserError(`--pretrained ${dir}: cannot read the directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const configFile = path.join(root, OPEN_CLIP_CONFIG);
  if (!names.includes(OPEN_CLIP_CONFIG))
    throw new UserError(
      `${configFile}: missing; a pretrained directory holds open_clip's config next to the weights (as the model hub ships it)`,
    );
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(configFile, 'utf8'));
  } catch (e) {
    throw new UserError(`${configFile}: not valid JSON (${(e as Error).message})`);
  }
  if (!isObj(raw) || !isObj(raw.model_cfg)) throw new UserError(`${configFile}: no 'model_cfg' object`);
  const m = raw.model_cfg;
  const field = (where: string) => (why: string) => new UserError(`${configFile}: ${where} ${why}`);
  if (!isObj(m.vision_cfg)) throw new UserError(`${configFile}: no 'model_cfg.vision_cfg' object`);
  const textCfg = isObj(m.text_cfg) ? m.text_cfg : {};
  const embedDim = posInt(m.embed_dim, field('model_cfg.embed_dim'));
  const quickGelu = m.quick_gelu === undefined ? false : bool(m.quick_gelu, field('model_cfg.quick_gelu'));
  const pre = isObj(raw.preprocess_cfg) ? raw.preprocess_cfg : {};
  const imageMean = pre.mean === undefined ? CLIP_MEAN : triple(pre.mean, field('preprocess_cfg.mean'), false);
  const imageStd = pre.std === undefined ? CLIP_STD : triple(pre.std, field('preprocess_cfg.std'), true);
  const vision = visionSpec(m.vision_cfg, quickGelu, (k) => field(`model_cfg.vision_cfg.${k}`));
  return {
    dir: root,
    configFile,
    weightsFile: path.join(root, weightsName(root, names)),
    embedDim,
    quickGelu,
    imageMean,
    imageStd,
    vision,
    textCfg,
    raw,
  };
}

function weightsName(root: string, names: string[]): string {
  for (const w of OPEN_CLIP_WEIGHTS) if (names.includes(w)) return w;
  const any = names.filter((n) => STATE_DICT_EXT.test(n)).sort();
  if (any.length === 1) return any[0]!;
  if (any.length === 0)
    throw new UserError(`${root}: no weights file; expected ${OPEN_CLIP_WEIGHTS.join(' or ')} (or one .safetensors/.bin/.pt state dict)`);
  throw new UserError(`${root}: several weights files (${any.join(', ')}) and none is named ${OPEN_CLIP_WEIGHTS.join(' or ')}; keep one`);
}

type Fail = (why: string) => UserError;

function posInt(v: unknown, fail: Fail): number {
  if (!Number.isSafeInteger(v) || (v as number) <= 0) throw fail(`must be a positive integer, is ${JSON.stringify(v)}`);
  return v as number;
}
function bool(v: unknown, fail: Fail): boolean {
  if (typeof v !== 'boolean') throw fail(`must be true or false, is ${JSON.stringify(v)}`);
  return v;
}
function triple(v: unknown, fail: Fail, positive: boolean): [number, number, number] {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0)))
    throw fail(`must be three ${positive ? 'positive ' : ''}numbers (R, G, B), is ${JSON.stringify(v)}`);
  return v as [number, number, number];
}
function squareSize(v: unknown, fail: Fail): number {
  if (Array.isArray(v)) {
    if (v.length !== 2 || v[0] !== v[1]) throw fail(`must be square, is ${JSON.stringify(v)}`);
    return posInt(v[0], fail);
  }
  return posInt(v, fail);
}

/** timm ViT shapes by size name (timm's vit_{size}_patch{P}_{S} models). */
const TIMM_VIT: Record<string, { width: number; layers: number; heads: number }> = {
  tiny: { width: 192, layers: 12, heads: 3 },
  small: { width: 384, layers: 12, heads: 6 },
  medium: { width: 512, layers: 12, heads: 8 },
  base: { width: 768, layers: 12, heads: 12 },
  large: { width: 1024, layers: 24, heads: 16 },
};

/** timm ViT keywords that only matter in training (dropout), so a config may set them. */
const TIMM_DROPOUT = ['drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate'];

function visionSpec(v: Obj, quickGelu: boolean, at: (k: string) => Fail): VisionSpec {
  const unsupported = (k: string, why: string) => at(k)(`${why}; this trainer reads open_clip ViTs and timm ViTs (vit_*_patchP_S)`);
  if (typeof v.timm_model_name === 'string' && v.timm_model_name) {
    const name = v.timm_model_name;
    // timm's *_clip_* ViTs differ (a pre-norm, LayerNorm eps 1e-5, no patch-embedding bias): not read as these.
    if (/^vit_\w+_clip_/.test(name))
      throw unsupported('timm_model_name', `is '${name}', a timm CLIP ViT (pre-norm, eps 1e-5), which is not read under timm names`);
    const parsed = /^vit_(tiny|small|medium|base|large)_patch(\d+)_(\d+)(?:\.|$)/.exec(name);
    if (!parsed) throw unsupported('timm_model_name', `is '${name}', not a timm ViT this trainer knows`);
    // With timm_proj 'linear' open_clip's TimmModel builds the trunk with its own pool (these ViTs:
    // the class token, so `norm` on every token and no fc_norm), then reset_classifier(global_pool=pool):
    // 'avg' is then the mean of the normed patch tokens, which is open_clip's pool_type 'avg' here.
    const pool = v.timm_pool ?? 'avg';
    if (pool !== '' && pool !== 'token' && pool !== 'avg')
      throw unsupported('timm_pool', `is '${pool}'; the class token ('' or 'token', as BiomedCLIP) and 'avg' are read`);
    if ((v.timm_proj ?? 'linear') !== 'linear') throw unsupported('timm_proj', `is '${v.timm_proj}'; only 'linear' is read`);
    if (v.timm_proj_bias === true) throw unsupported('timm_proj_bias', 'is true; only a projection without bias is read');
    const kw = isObj(v.timm_model_kwargs) ? v.timm_model_kwargs : {};
    // Any other keyword changes the trunk (global_pool or fc_norm move the final norm after the pool, class_token, pre_norm, ...).
    const known = ['embed_dim', 'depth', 'num_heads', 'patch_size', 'img_size', 'mlp_ratio', ...TIMM_DROPOUT];
    for (const k of Object.keys(kw))
      if (!known.includes(k))
        throw unsupported(`timm_model_kwargs.${k}`, `is set; only ${known.slice(0, 6).join(', ')} and dropout rates are read`);
    const base = TIMM_VIT[parsed[1]!]!;
    const width = kw.embed_dim === undefined ? base.width : posInt(kw.embed_dim, at('timm_model_kwargs.embed_dim'));
    const mlpRatio = kw.mlp_ratio === undefined ? 4 : Number(kw.mlp_ratio);
    const imageSize =
      kw.img_size !== undefined
        ? squareSize(kw.img_size, at('timm_model_kwargs.img_size'))
        : v.image_size !== undefined
          ? squareSize(v.image_size, at('image_size'))
          : Number(parsed[3]);
    return checked(
      {
        kind: 'timm-vit',
        timmModelName: name,
        imageSize,
        patchSize: kw.patch_size === undefined ? Number(parsed[2]) : posInt(kw.patch_size, at('timm_model_kwargs.patch_size')),
        width,
        layers: kw.depth === undefined ? base.layers : posInt(kw.depth, at('timm_model_kwargs.depth')),
        heads: kw.num_heads === undefined ? base.heads : posInt(kw.num_heads, at('timm_model_kwargs.num_heads')),
        mlpWidth: Math.round(width * mlpRatio),
        lnEps: 1e-6,
        lnPre: false,
        act: 'gelu',
        pool: pool === 'avg' ? 'avg' : 'tok',
      },
      at,
    );
  }
  if (Array.isArray(v.layers)) throw unsupported('layers', 'is a list (a ModifiedResNet image tower)');
  for (const k of ['attentional_pool', 'final_ln_after_pool', 'qk_norm', 'scaled_cosine_attn', 'scale_heads', 'scale_attn', 'scale_fc'])
    if (v[k] === true) throw unsupported(k, 'is true');
  if (v.ls_init_value !== undefined && v.ls_init_value !== null) throw unsupported('ls_init_value', 'is set (layer scale)');
  if ((v.pos_embed_type ?? 'learnable') !== 'learnable') throw unsupported('pos_embed_type', `is '${v.pos_embed_type}'`);
  const pool = v.pool_type ?? 'tok';
  if (pool !== 'tok' && pool !== 'avg') throw unsupported('pool_type', `is '${pool}'; 'tok' and 'avg' are read`);
  const width = v.width === undefined ? 768 : posInt(v.width, at('width'));
  const headWidth = v.head_width === undefined ? 64 : posInt(v.head_width, at('head_width'));
  const mlpRatio = v.mlp_ratio === undefined ? 4 : Number(v.mlp_ratio);
  const norm = isObj(v.norm_kwargs) ? v.norm_kwargs : {};
  return checked(
    {
      kind: 'open-clip-vit',
      imageSize: v.image_size === undefined ? 224 : squareSize(v.image_size, at('image_size')),
      patchSize: v.patch_size === undefined ? 16 : posInt(v.patch_size, at('patch_size')),
      width,
      layers: v.layers === undefined ? 12 : posInt(v.layers, at('layers')),
      heads: Math.floor(width / headWidth),
      mlpWidth: Math.floor(width * mlpRatio),
      lnEps: typeof norm.eps === 'number' ? norm.eps : 1e-5,
      lnPre: v.no_ln_pre !== true,
      act: quickGelu ? 'quick_gelu' : 'gelu',
      pool: pool as 'tok' | 'avg',
    },
    at,
  );
}

function checked(s: VisionSpec, at: (k: string) => Fail): VisionSpec {
  if (!(s.mlpWidth > 0)) throw at('mlp_ratio')(`gives an MLP width of ${s.mlpWidth}`);
  if (s.heads < 1 || s.width % s.heads !== 0) throw at('width')(`${s.width} does not split into ${s.heads} heads`);
  if (s.imageSize % s.patchSize !== 0) throw at('image_size')(`${s.imageSize} is not a multiple of the patch size ${s.patchSize}`);
  return s;
}
