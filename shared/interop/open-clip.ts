import { UserError } from '../util/errors.js';
import type { ParamEntry, ParamLayout } from '../params.js';
import { SafetensorsFile, type TensorOut } from './safetensors.js';

/**
 * The mapping between the flat parameter layout (TensorFlow.js tensor layouts) and open_clip's
 * state dict (PyTorch layouts), for export to safetensors and for --init-weights. Names are the
 * same on both sides; only the image tower's tensors change layout:
 *   - dense kernels stored [in, out] here are nn.Linear / MultiheadAttention weights [out, in]
 *     (attn.in_proj_weight, attn.out_proj.weight, mlp.c_fc.weight, mlp.c_proj.weight): transposed;
 *   - visual.conv1.weight [p, p, cin, width] is nn.Conv2d's [width, 3, p, p]. A grayscale stem
 *     (cin = 1) is exported as an RGB kernel whose channels sum to the gray kernel, so open_clip
 *     given the gray image replicated to RGB computes the same thing; import sums over channels.
 *   - visual.proj [width, dim] is used as x @ proj in open_clip too: unchanged.
 *   - the text towers' nn.Linear weights (CLIP's resblocks as above; BERT's query/key/value,
 *     attention.output.dense, intermediate.dense, output.dense, pooler.dense; HFTextEncoder's
 *     proj) are transposed the same way; embeddings and CLIP's text_projection [width, dim] are not.
 * Everything else (text head, logit_scale) is written under its own name and shape.
 */
const TRANSPOSED = new RegExp(
  [
    // open_clip's transformer blocks, in the image tower and in CLIP's text tower (top-level in the
    // CLIP class, under `text.` in CustomTextCLIP).
    String.raw`^(visual\..*|(text\.)?transformer\.resblocks\.\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$`,
    // Hugging Face BERT's nn.Linear layers and open_clip's HFTextEncoder projection.
    String.raw`^text\.transformer\.(encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)|pooler\.dense)\.weight$`,
    String.raw`^text\.proj(\.\d+)?\.weight$`,
  ].join('|'),
);
const CONV1 = 'visual.conv1.weight';

/** The PyTorch (open_clip) shape of a layout entry. */
export function openClipShape(e: Pick<ParamEntry, 'name' | 'shape'>): number[] {
  if (e.name === CONV1) {
    const [kh, kw, cin, out] = conv1Dims(e);
    void cin;
    return [out, 3, kh, kw];
  }
  if (TRANSPOSED.test(e.name)) {
    if (e.shape.length !== 2) throw new Error(`parameter '${e.name}' should be 2-D, has shape ${JSON.stringify(e.shape)}`);
    return [e.shape[1]!, e.shape[0]!];
  }
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

/**
 * TF conv kernel [kh, kw, cin, out] -> torch [out, 3, kh, kw]. A gray kernel w becomes channels
 * (a, a, w - 2a) with a = fl(w / 3): a + a is exact and w - 2a is exact (Sterbenz), so the
 * channels sum to w exactly and export -> import gives back the same bits.
 */
function conv1ToTorch(src: Float32Array, [kh, kw, cin, out]: [number, number, number, number]): Float32Array {
  const dst = new Float32Array(out * 3 * kh * kw);
  const f = new Float32Array(3);
  for (let i = 0; i < kh; i++)
    for (let j = 0; j < kw; j++)
      for (let o = 0; o < out; o++) {
        const at = (c: number) => ((i * kw + j) * cin + c) * out + o;
        if (cin === 1) {
          f[0] = src[at(0)]! / 3;
          f[1] = f[0]!;
          f[2] = src[at(0)]! - (f[0]! + f[1]!);
        } else for (let c = 0; c < 3; c++) f[c] = src[at(c)]!;
        for (let c = 0; c < 3; c++) dst[((o * 3 + c) * kh + i) * kw + j] = f[c]!;
      }
  return dst;
}

/** torch [out, 3, kh, kw] -> TF [kh, kw, cin, out]; cin = 1 sums the RGB channels (gray replicated to RGB). */
function conv1FromTorch(src: Float32Array, [kh, kw, cin, out]: [number, number, number, number]): Float32Array {
  const dst = new Float32Array(kh * kw * cin * out);
  const f = new Float32Array(1);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < kh; i++)
      for (let j = 0; j < kw; j++) {
        const at = (c: number) => ((o * 3 + c) * kh + i) * kw + j;
        if (cin === 1) {
          f[0] = src[at(0)]! + src[at(1)]!;
          f[0] = f[0]! + src[at(2)]!;
          dst[(i * kw + j) * out + o] = f[0]!;
        } else for (let c = 0; c < 3; c++) dst[((i * kw + j) * 3 + c) * out + o] = src[at(c)]!;
      }
  return dst;
}

/** The tensors of a flat parameter vector under open_clip's names and layouts, produced lazily one at a time. */
export function openClipTensors(layout: ParamLayout, params: Float32Array): TensorOut[] {
  if (params.length !== layout.total) throw new Error(`openClipTensors: ${params.length} values for a layout of ${layout.total}`);
  return layout.entries.map((e) => {
    const src = params.subarray(e.offset, e.offset + e.size);
    const shape = openClipShape(e);
    const data =
      e.name === CONV1
        ? () => conv1ToTorch(src, conv1Dims(e))
        : TRANSPOSED.test(e.name)
          ? () => transpose2d(src, e.shape[0]!, e.shape[1]!)
          : src;
    return { name: e.name, shape, data };
  });
}

/** One tensor read in open_clip's layout (openClipShape(e)) as the layout entry's TensorFlow.js layout. */
export function fromOpenClipLayout(e: { name: string; shape: readonly number[] }, src: Float32Array): Float32Array {
  if (e.name === CONV1) return conv1FromTorch(src, conv1Dims(e));
  if (TRANSPOSED.test(e.name)) return transpose2d(src, e.shape[1]!, e.shape[0]!);
  return src;
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
 * --init-weights: read open_clip-named tensors from a safetensors file into a copy of `init`
 * (the model's fresh parameters). Shapes are checked in open_clip's layout and a mismatch names
 * the tensor; a file with no tensor of this model is refused. F16/BF16/F64 files are converted.
 */
export async function loadInitWeights(file: string, layout: ParamLayout, init: Float32Array): Promise<InitWeights> {
  if (init.length !== layout.total) throw new Error(`loadInitWeights: initial vector has ${init.length} values, layout ${layout.total}`);
  const st = await SafetensorsFile.open(file);
  try {
    const params = init.slice();
    const loaded: string[] = [];
    const missing: string[] = [];
    for (const e of layout.entries) {
      const t = st.tensors.get(e.name);
      if (!t) {
        missing.push(e.name);
        continue;
      }
      const want = openClipShape(e);
      if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
        const hint = e.name === CONV1 ? ' (open_clip layout [width, 3, patch, patch])' : '';
        throw new UserError(
          `${file}: tensor '${e.name}' has shape ${JSON.stringify(t.shape)}, this model needs ${JSON.stringify(want)}${hint}; ` +
            `choose the model preset that matches the weights`,
        );
      }
      params.set(fromOpenClipLayout(e, await st.readF32(e.name)), e.offset);
      loaded.push(e.name);
    }
    const known = new Set(layout.entries.map((e) => e.name));
    const unused = [...st.tensors.keys()].filter((n) => !known.has(n));
    if (loaded.length === 0)
      throw new UserError(
        `${file}: none of its ${st.tensors.size} tensors is a parameter of this model (expected open_clip names such as '${layout.entries[0]?.name}')`,
      );
    return { params, loaded, missing, unused };
  } finally {
    await st.close();
  }
}
