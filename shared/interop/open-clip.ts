import { UserError } from '../util/errors.js';
import type { ParamEntry, ParamLayout } from '../params.js';
import type { TensorOut } from './safetensors.js';
import { openStateDict, type StateDict } from './state-dict.js';

/**
 * The mapping between the flat parameter layout (TensorFlow.js tensor layouts, open_clip
 * VisionTransformer names) and a PyTorch state dict, for export and for loading weights
 * (--init-weights, --pretrained). Two image towers:
 *   - `open-clip-vit`: open_clip's VisionTransformer, the same names; dense kernels stored
 *     [in, out] here are nn.Linear / MultiheadAttention weights [out, in] there (transposed);
 *   - `timm-vit`: a timm VisionTransformer inside open_clip's TimmModel (BiomedCLIP), names
 *     `visual.trunk.*` (patch_embed.proj, cls_token [1, 1, W], pos_embed [1, T, W],
 *     blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm) and
 *     `visual.head.proj.weight` [dim, W] for visual.proj.
 * The stem: visual.conv1.weight [p, p, 1, width] is a one-channel kernel for the input
 * x = (pixel/255 - 0.5) / 0.25, while PyTorch's conv is [width, 3, p, p] over the gray image
 * replicated to RGB and normalised per channel, (v - mean_c) / std_c. With v = 0.25 x + 0.5 that
 * conv is exactly sum_c (0.25 / std_c) W_c x plus, per output channel, the constant
 * k = sum_c sum_taps W_c (0.5 - mean_c) / std_c (plus timm's conv bias), which is the same for
 * every patch and so lives in the patch rows of the position embedding. Import folds, export
 * unfolds (docs/model.md). The text towers (model/text/) have open_clip's names on both sides; their
 * nn.Linear weights are transposed like the image tower's (CLIP's resblocks; BERT's query, key,
 * value, attention.output.dense, intermediate.dense, output.dense, pooler.dense; HFTextEncoder's
 * proj), embeddings and CLIP's text_projection [width, dim] are not. The text head's blocks
 * (`text.head.resblocks.N`) are laid out as open_clip's blocks; everything else (the MLP text head,
 * logit_scale) keeps its name and shape.
 */
export type ImageTower = 'open-clip-vit' | 'timm-vit';

/** How the weights on the PyTorch side are laid out; the defaults are open_clip names and the stem's own 0.5 / 0.25. */
export interface TorchFormat {
  readonly tower?: ImageTower;
  readonly imageMean?: readonly number[];
  readonly imageStd?: readonly number[];
}

const TRANSPOSED = new RegExp(
  [
    // open_clip's transformer blocks, in the image tower and in CLIP's text tower (top-level in the
    // CLIP class, under `text.` in CustomTextCLIP), and the text head's blocks (--text-head transformer).
    String.raw`^(visual\..*|(text\.)?transformer\.resblocks\.\d+|text\.head\.resblocks\.\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$`,
    // Hugging Face BERT's nn.Linear layers and open_clip's HFTextEncoder projection.
    String.raw`^text\.transformer\.(encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)|pooler\.dense)\.weight$`,
    String.raw`^text\.proj(\.\d+)?\.weight$`,
  ].join('|'),
);
const CONV1 = 'visual.conv1.weight';
const POS = 'visual.positional_embedding';
const TIMM_BIAS = 'visual.trunk.patch_embed.proj.bias';
/** The stem's input is (pixel/255 - STEM_MEAN) / STEM_STD on every channel. */
const STEM_MEAN = 0.5;
const STEM_STD = 0.25;

const TIMM_BLOCK: Record<string, string> = {
  'ln_1.weight': 'norm1.weight',
  'ln_1.bias': 'norm1.bias',
  'attn.in_proj_weight': 'attn.qkv.weight',
  'attn.in_proj_bias': 'attn.qkv.bias',
  'attn.out_proj.weight': 'attn.proj.weight',
  'attn.out_proj.bias': 'attn.proj.bias',
  'ln_2.weight': 'norm2.weight',
  'ln_2.bias': 'norm2.bias',
  'mlp.c_fc.weight': 'mlp.fc1.weight',
  'mlp.c_fc.bias': 'mlp.fc1.bias',
  'mlp.c_proj.weight': 'mlp.fc2.weight',
  'mlp.c_proj.bias': 'mlp.fc2.bias',
};
const TIMM_TOP: Record<string, string> = {
  [CONV1]: 'visual.trunk.patch_embed.proj.weight',
  'visual.class_embedding': 'visual.trunk.cls_token',
  [POS]: 'visual.trunk.pos_embed',
  'visual.ln_post.weight': 'visual.trunk.norm.weight',
  'visual.ln_post.bias': 'visual.trunk.norm.bias',
  'visual.proj': 'visual.head.proj.weight',
};

/** The PyTorch name of a layout entry. */
export function torchName(name: string, fmt: TorchFormat = {}): string {
  if ((fmt.tower ?? 'open-clip-vit') === 'open-clip-vit') return name;
  if (TIMM_TOP[name]) return TIMM_TOP[name]!;
  const m = /^visual\.transformer\.resblocks\.(\d+)\.(.+)$/.exec(name);
  if (m && TIMM_BLOCK[m[2]!]) return `visual.trunk.blocks.${m[1]}.${TIMM_BLOCK[m[2]!]}`;
  return name;
}

/** Whether the PyTorch tensor is the transpose of ours (nn.Linear weights; timm's head projection). */
function transposed(name: string, fmt: TorchFormat): boolean {
  return TRANSPOSED.test(name) || (fmt.tower === 'timm-vit' && name === 'visual.proj');
}

/** The PyTorch (open_clip) shape of a layout entry. */
export function openClipShape(e: Pick<ParamEntry, 'name' | 'shape'>, fmt: TorchFormat = {}): number[] {
  if (e.name === CONV1) {
    const [kh, kw, , out] = conv1Dims(e);
    return [out, 3, kh, kw];
  }
  if (transposed(e.name, fmt)) {
    if (e.shape.length !== 2) throw new Error(`parameter '${e.name}' should be 2-D, has shape ${JSON.stringify(e.shape)}`);
    return [e.shape[1]!, e.shape[0]!];
  }
  if (fmt.tower === 'timm-vit' && (e.name === 'visual.class_embedding' || e.name === POS))
    return [1, ...(e.name === POS ? [] : [1]), ...e.shape];
  return [...e.shape];
}

function conv1Dims(e: { name: string; shape: readonly number[] }): [number, number, number, number] {
  if (e.shape.length !== 4 || (e.shape[2] !== 1 && e.shape[2] !== 3))
    throw new Error(`parameter '${CONV1}' should be [p, p, 1 or 3, width], has shape ${JSON.stringify(e.shape)}`);
  return e.shape as unknown as [number, number, number, number];
}

function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(src.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  return out;
}

/** Per channel c, the factor (STEM_STD / std_c) and offset ((STEM_MEAN - mean_c) / std_c) of the fold; null where it is the identity. */
function stemFold(fmt: TorchFormat): { scale: number[]; shift: number[] } | null {
  const mean = fmt.imageMean ?? [STEM_MEAN, STEM_MEAN, STEM_MEAN];
  const std = fmt.imageStd ?? [STEM_STD, STEM_STD, STEM_STD];
  if (mean.every((m) => m === STEM_MEAN) && std.every((s) => s === STEM_STD)) return null;
  return { scale: std.map((s) => STEM_STD / s), shift: mean.map((m, c) => (STEM_MEAN - m) / std[c]!) };
}

/**
 * TF conv kernel [kh, kw, cin, out] -> torch [out, 3, kh, kw]. Without a fold a gray kernel w
 * becomes channels (a, a, w - 2a) with a = fl(w / 3): a + a is exact and w - 2a is exact
 * (Sterbenz), so the channels sum to w exactly and export -> import gives back the same bits.
 * With a fold, W_c = w / (3 scale_c), so that sum_c scale_c W_c = w.
 */
function conv1ToTorch(src: Float32Array, [kh, kw, cin, out]: [number, number, number, number], fmt: TorchFormat): Float32Array {
  const fold = stemFold(fmt);
  const dst = new Float32Array(out * 3 * kh * kw);
  const f = new Float32Array(3);
  for (let i = 0; i < kh; i++)
    for (let j = 0; j < kw; j++)
      for (let o = 0; o < out; o++) {
        const at = (c: number) => ((i * kw + j) * cin + c) * out + o;
        if (cin === 1 && fold) for (let c = 0; c < 3; c++) f[c] = src[at(0)]! / (3 * fold.scale[c]!);
        else if (cin === 1) {
          f[0] = src[at(0)]! / 3;
          f[1] = f[0]!;
          f[2] = src[at(0)]! - (f[0]! + f[1]!);
        } else for (let c = 0; c < 3; c++) f[c] = src[at(c)]!;
        for (let c = 0; c < 3; c++) dst[((o * 3 + c) * kh + i) * kw + j] = f[c]!;
      }
  return dst;
}

/** torch [out, 3, kh, kw] -> TF [kh, kw, cin, out]; cin = 1 folds the three channels of the gray image replicated to RGB. */
function conv1FromTorch(src: Float32Array, [kh, kw, cin, out]: [number, number, number, number], fmt: TorchFormat): Float32Array {
  const fold = stemFold(fmt);
  const dst = new Float32Array(kh * kw * cin * out);
  const f = new Float32Array(1);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < kh; i++)
      for (let j = 0; j < kw; j++) {
        const at = (c: number) => ((o * 3 + c) * kh + i) * kw + j;
        if (cin === 1 && fold) {
          dst[(i * kw + j) * out + o] = src[at(0)]! * fold.scale[0]! + src[at(1)]! * fold.scale[1]! + src[at(2)]! * fold.scale[2]!;
        } else if (cin === 1) {
          f[0] = src[at(0)]! + src[at(1)]!;
          f[0] = f[0]! + src[at(2)]!;
          dst[(i * kw + j) * out + o] = f[0]!;
        } else for (let c = 0; c < 3; c++) dst[((i * kw + j) * 3 + c) * out + o] = src[at(c)]!;
      }
  return dst;
}

/** The fold's constant per output channel, sum_c shift_c sum_taps W_c, of a torch kernel [out, 3, kh, kw] (null: none). */
function stemConstant(torchConv: Float32Array, out: number, fmt: TorchFormat): Float64Array | null {
  const fold = stemFold(fmt);
  if (!fold) return null;
  const taps = torchConv.length / (out * 3);
  const k = new Float64Array(out);
  for (let o = 0; o < out; o++)
    for (let c = 0; c < 3; c++) {
      let s = 0;
      for (let t = 0; t < taps; t++) s += torchConv[(o * 3 + c) * taps + t]!;
      k[o]! += fold.shift[c]! * s;
    }
  return k;
}

/** Adds `sign * k` to every patch row (1..) of a position embedding [tokens, width], in place. */
function addToPatchRows(pos: Float32Array, k: Float64Array, sign: 1 | -1): void {
  const w = k.length;
  for (let r = w; r < pos.length; r += w) for (let o = 0; o < w; o++) pos[r + o] = pos[r + o]! + sign * k[o]!;
}

/** The tensors of a flat parameter vector under PyTorch names and layouts, produced lazily one at a time. */
export function openClipTensors(layout: ParamLayout, params: Float32Array, fmt: TorchFormat = {}): TensorOut[] {
  if (params.length !== layout.total) throw new Error(`openClipTensors: ${params.length} values for a layout of ${layout.total}`);
  const view = (e: ParamEntry) => params.subarray(e.offset, e.offset + e.size);
  const conv = layout.entries.find((e) => e.name === CONV1);
  const torchConv = () => conv1ToTorch(view(conv!), conv1Dims(conv!), fmt);
  const out: TensorOut[] = layout.entries.map((e) => {
    const src = view(e);
    const shape = openClipShape(e, fmt);
    let data: TensorOut['data'] = src;
    if (e.name === CONV1) data = torchConv;
    else if (transposed(e.name, fmt)) data = () => transpose2d(src, e.shape[0]!, e.shape[1]!);
    else if (e.name === POS && conv && stemFold(fmt) && conv1Dims(conv)[2] === 1)
      data = () => {
        const pos = src.slice();
        addToPatchRows(pos, stemConstant(torchConv(), conv.shape[3]!, fmt)!, -1);
        return pos;
      };
    return { name: torchName(e.name, fmt), shape, data };
  });
  // timm's patch embedding has a bias; ours is in the position embedding.
  if (fmt.tower === 'timm-vit' && conv)
    out.splice(out.findIndex((t) => t.name === torchName(CONV1, fmt)) + 1, 0, {
      name: TIMM_BIAS,
      shape: [conv.shape[3]!],
      data: new Float32Array(conv.shape[3]!),
    });
  return out;
}

/** One tensor other than the stem read in PyTorch's layout (openClipShape) as the layout entry's TensorFlow.js layout. */
export function fromOpenClipLayout(e: Pick<ParamEntry, 'name' | 'shape'>, src: Float32Array, fmt: TorchFormat = {}): Float32Array {
  if (e.name === CONV1) throw new Error('fromOpenClipLayout: the stem is folded with the position embedding (loadInitWeights)');
  return transposed(e.name, fmt) ? transpose2d(src, e.shape[1]!, e.shape[0]!) : src;
}

export interface InitWeights {
  /** The initial vector with every tensor found in the file written over it. */
  readonly params: Float32Array;
  readonly loaded: string[];
  /** Parameters of this model that the file lacks (they keep their fresh initialisation). */
  readonly missing: string[];
  /** Tensors in the file this model has no parameter for (e.g. an open_clip text tower). */
  readonly unused: string[];
}

/**
 * Reads PyTorch-named tensors from a weights file (safetensors or a PyTorch zip checkpoint) into a
 * copy of `init` (the model's fresh parameters). Shapes are checked in PyTorch's layout and a
 * mismatch names the tensor; a file with no tensor of this model is refused. F16/BF16/F64 are
 * converted. `require` lists layout names that must be in the file (--pretrained: the image tower).
 */
export async function loadInitWeights(
  file: string,
  layout: ParamLayout,
  init: Float32Array,
  fmt: TorchFormat = {},
  require: (name: string) => boolean = () => false,
): Promise<InitWeights> {
  if (init.length !== layout.total) throw new Error(`loadInitWeights: initial vector has ${init.length} values, layout ${layout.total}`);
  const sd = await openStateDict(file);
  try {
    return await readInto(sd, layout, init, fmt, require);
  } finally {
    await sd.close();
  }
}

async function readInto(
  sd: StateDict,
  layout: ParamLayout,
  init: Float32Array,
  fmt: TorchFormat,
  require: (name: string) => boolean,
): Promise<InitWeights> {
  const file = sd.path;
  const params = init.slice();
  const loaded: string[] = [];
  const missing: string[] = [];
  const used = new Set<string>();
  let constant: Float64Array | null = null;
  for (const e of layout.entries) {
    const name = torchName(e.name, fmt);
    const t = sd.tensors.get(name);
    if (!t) {
      if (require(e.name))
        throw new UserError(
          `${file}: no tensor '${name}'; ${fmt.tower === 'timm-vit' ? 'a timm ViT (BiomedCLIP)' : "open_clip's VisionTransformer"} image tower needs it ` +
            `(is open_clip_config.json the config of these weights?)`,
        );
      missing.push(e.name);
      continue;
    }
    const want = openClipShape(e, fmt);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
      const hint = e.name === CONV1 ? ' (PyTorch layout [width, 3, patch, patch])' : '';
      throw new UserError(
        `${file}: tensor '${name}' has shape ${JSON.stringify(t.shape)}, this model needs ${JSON.stringify(want)}${hint}; ` +
          `the weights and the model configuration (preset or open_clip_config.json) do not match`,
      );
    }
    const src = await sd.readF32(name);
    let data = src;
    if (e.name === CONV1) {
      data = conv1FromTorch(src, conv1Dims(e), fmt);
      if (e.shape[2] === 1) constant = stemConstant(src, e.shape[3]!, fmt);
    } else if (transposed(e.name, fmt)) data = transpose2d(src, want[0]!, want[1]!);
    params.set(data, e.offset);
    loaded.push(e.name);
    used.add(name);
  }
  const pos = layout.entries.find((e) => e.name === POS);
  if (fmt.tower === 'timm-vit' && sd.tensors.has(TIMM_BIAS) && pos) {
    const bias = await sd.readF32(TIMM_BIAS);
    if (bias.length !== pos.shape[1])
      throw new UserError(`${file}: tensor '${TIMM_BIAS}' has ${bias.length} values, this model needs ${pos.shape[1]}`);
    constant ??= new Float64Array(bias.length);
    for (let o = 0; o < bias.length; o++) constant[o]! += bias[o]!;
    used.add(TIMM_BIAS);
  }
  if (constant && pos) addToPatchRows(params.subarray(pos.offset, pos.offset + pos.size), constant, 1);
  const unused = [...sd.tensors.keys()].filter((n) => !used.has(n));
  if (loaded.length === 0)
    throw new UserError(
      `${file}: none of its ${sd.tensors.size} tensors is a parameter of this model (expected names such as '${torchName(layout.entries[0]?.name ?? '', fmt)}')`,
    );
  return { params, loaded, missing, unused };
}
