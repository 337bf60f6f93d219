import * as tf from '@tensorflow/tfjs';
import { buildLayout, type ParamLayout } from '../shared/params.js';
import { labelText } from '../shared/labels.js';
import { type ModelConfig, mlpWidth, tokenCount } from './config.js';
import { type ParamGetter, residualAttentionBlock, residualBlockSpecs } from './blocks.js';
import { dense, gelu, layerNorm } from './layers.js';
import type { ParamSpec } from './param-specs.js';
import {
  encodeTextTower,
  type TextTowerShape,
  textHeadBlocks,
  textHeadSpecs,
  textTowerReadout,
  textTowerSpecs,
  textTowerStates,
  textTowerTailSpecs,
} from './text/tower.js';
import { mulberry32, normalSource } from '../shared/random/generators.js';
import { assignConcatenated, readConcatenated } from './tensor-storage.js';
import { cosineLogits } from './losses.js';

/**
 * Pixels enter as uint8 grayscale. With `inputNorm: 'fixed'` the stem sees (p/255 - PIXEL_MEAN) /
 * PIXEL_STD on one channel (docs/model.md gives the exact conversion to and from open_clip's
 * 3-channel conv1); with `image`, each image standardised over its own pixels.
 */
export const PIXEL_MEAN = 0.5;
export const PIXEL_STD = 0.25;
/** CLIP's initial contrastive temperature 1/0.07 and its clamp of exp(logit_scale) at 100. */
export const LOGIT_SCALE_INIT = Math.log(1 / 0.07);
export const LOGIT_SCALE_MAX = 100;
/**
 * Initial classification scale on the cosine (a cosine of 1 then means a logit of 30). Early in
 * training the cosines of positives and negatives differ by a few hundredths; at scale 10 that is
 * a fraction of a logit and the rare findings' gradients stay weak for the whole of a short run
 * (docs/results.md: mean AUROC 0.88 -> 0.91 on the synthetic set, 3 epochs).
 */
export const CLS_SCALE_INIT = Math.log(30);
/** Variance floor of per-image standardisation, in (p/255)^2 units: a blank image maps to zeros. */
export const IMAGE_VAR_EPS = 1e-6;

/** The three prompts per label, in the order of the prompt embedding rows. */
export function labelPrompts(labels: readonly string[]): string[] {
  const names = labels.map(labelText);
  return [...names, ...names.map((n) => `Positive ${n}`), ...names.map((n) => `Negative ${n}`)];
}

function visualHeadLayers(c: ModelConfig): number {
  return c.visualHeadLayers ?? 1;
}

function textHeadLayers(c: ModelConfig): number {
  return c.textHeadLayers ?? 1;
}

/** The text tower of a configuration whose prompts come from one (--text-tower). */
function textTowerOf(c: ModelConfig): TextTowerShape {
  if (c.text.kind !== 'tower' && c.text.kind !== 'frozen') throw new Error('model: --text-head transformer needs a text tower');
  return c.text.tower;
}

/**
 * The pretrained text tower's parameters the model holds (open_clip's names, read from the
 * --pretrained weights): all of them when the tower is trained (finetune), its readout when it is
 * frozen under --text-head transformer (the head runs between its blocks and its readout; the
 * readout stays frozen, model/param-groups.ts), else none.
 */
export function textTowerParams(c: ModelConfig): ParamSpec[] {
  if (c.head !== 'text') return [];
  if (c.text.kind === 'tower') return textTowerSpecs(c.text.tower);
  if (c.text.kind === 'frozen' && c.textHead === 'transformer') return textTowerTailSpecs(c.text.tower);
  return [];
}

/**
 * The fixed prompt data a configuration takes, as [rows, columns]: vectors [3L, dim] from
 * --text-embeddings or a frozen tower, or a frozen tower's last hidden states [3L * T, width] of
 * its token rows under --text-head transformer; null: none (learnable prompts, a trained tower).
 */
export function fixedPromptShape(c: ModelConfig): [number, number] | null {
  if (c.head !== 'text') return null;
  const rows = 3 * c.labels.length;
  if (c.text.kind === 'file') return [rows, c.text.dim];
  if (c.text.kind !== 'frozen') return null;
  if (c.textHead === 'transformer' && c.text.tokens) return [rows * c.text.tokens[0]!.length, c.text.tower.width];
  return [rows, c.text.dim];
}

function spatialRank(c: ModelConfig): number {
  if (!c.spatialRank) throw new Error('model: the spatial readout needs config.spatialRank');
  return c.spatialRank;
}

function paramSpecs(c: ModelConfig): ParamSpec[] {
  const W = c.width;
  const scale = W ** -0.5;
  const projStd = scale * (2 * c.layers) ** -0.5;
  const fcStd = (2 * W) ** -0.5;
  const M = mlpWidth(c);
  const s: ParamSpec[] = [];
  const p = (name: string, shape: number[], decay: boolean, init: ParamSpec['init']) => s.push({ name, shape, decay, init });
  const ones = { value: 1 };
  const zeros = { value: 0 };
  p('visual.conv1.weight', [c.patchSize, c.patchSize, 1, W], true, { std: (c.patchSize * c.patchSize) ** -0.5 });
  p('visual.class_embedding', [W], false, { std: scale });
  p('visual.positional_embedding', [tokenCount(c), W], false, { std: c.posInitStd ?? scale });
  if (c.lnPre ?? true) {
    p('visual.ln_pre.weight', [W], false, ones);
    p('visual.ln_pre.bias', [W], false, zeros);
  }
  // `outStd` null: the block's output projections start at zero, so it starts as the identity.
  const resblock = (b: string, outStd: number | null) => s.push(...residualBlockSpecs(b, W, M, { attnStd: scale, fcStd, outStd }));
  for (let i = 0; i < c.layers; i++) resblock(`visual.transformer.resblocks.${i}`, projStd);
  // The visual head starts as the identity (zero output projections), so a pretrained tower's
  // embeddings, and its zero-shot scores, are unchanged at step 0.
  if (c.visualHead === 'transformer') for (let i = 0; i < visualHeadLayers(c); i++) resblock(`visual.head.resblocks.${i}`, null);
  p('visual.ln_post.weight', [W], false, ones);
  p('visual.ln_post.bias', [W], false, zeros);
  if (c.pool === 'spatial') {
    const r = spatialRank(c);
    p('visual.spatial_pool.reduce.weight', [W, r], true, { std: scale });
    p('visual.spatial_pool.map.weight', [(tokenCount(c) - 1) * r, W], true, { std: ((tokenCount(c) - 1) * r) ** -0.5 });
    p('visual.spatial_pool.map.bias', [W], false, zeros);
  }
  p('visual.proj', [W, c.embedDim], true, { std: scale });
  const L = c.labels.length;
  const D = c.embedDim;
  if (c.visualHead === 'mlp') {
    p('visual.head.fc1.weight', [D, D], true, { std: D ** -0.5 });
    p('visual.head.fc1.bias', [D], false, zeros);
    p('visual.head.fc2.weight', [D, D], true, zeros);
    p('visual.head.fc2.bias', [D], false, zeros);
  }
  if (c.head === 'linear') {
    p('cls.weight', [D, L], true, { std: D ** -0.5 });
    p('cls.bias', [L], false, zeros);
    return s;
  }
  const T = c.text.dim;
  if (c.text.kind === 'learnable') p('text.prompt_embeddings', [3 * L, T], false, { std: 1 });
  s.push(...textTowerParams(c));
  if (c.textHead === 'transformer') s.push(...textHeadSpecs(textTowerOf(c), textHeadLayers(c)));
  if (!c.textHead) {
    p('text.head.fc1.weight', [T, D], true, { std: T ** -0.5 });
    p('text.head.fc1.bias', [D], false, zeros);
    p('text.head.fc2.weight', [D, D], true, { std: D ** -0.5 * 0.1 });
    p('text.head.fc2.bias', [D], false, zeros);
  }
  p('logit_scale', [], false, { value: LOGIT_SCALE_INIT });
  p('cls.log_scale', [], false, { value: CLS_SCALE_INIT });
  p('cls.bias', [L], false, zeros);
  return s;
}

/** The flat layout of a model configuration (no tensors are created). */
export function modelLayout(c: ModelConfig): ParamLayout {
  return buildLayout(paramSpecs(c));
}

/** Seeded initial parameters as one flat vector in layout order. */
export function initialParams(c: ModelConfig, seed: number): Float32Array {
  const specs = paramSpecs(c);
  const layout = buildLayout(specs);
  const out = new Float32Array(layout.total);
  const normal = normalSource(mulberry32(seed));
  specs.forEach((s, k) => {
    const e = layout.entries[k]!;
    const view = out.subarray(e.offset, e.offset + e.size);
    if ('value' in s.init) view.fill(s.init.value);
    else for (let i = 0; i < view.length; i++) view[i] = normal() * s.init.std;
  });
  return out;
}

export interface TextEmbeddings {
  /** Label-name embeddings [L, D] (classification targets, label prior). */
  names: tf.Tensor2D;
  /** "Positive <label>" / "Negative <label>" embeddings [L, D] (contrastive targets). */
  positive: tf.Tensor2D;
  negative: tf.Tensor2D;
}

let instances = 0;

/**
 * A CLIP-style ViT image tower plus the label text branch, its variables kept in TensorFlow.js.
 * Every parameter is addressed by open_clip's state-dict name through the flat layout.
 */
export class CxrModel {
  readonly config: ModelConfig;
  readonly layout: ParamLayout;
  /** Variables in layout order. */
  readonly variables: tf.Variable[];
  private readonly byName = new Map<string, tf.Variable>();
  /** Fixed prompt data (not trained): fixedPromptShape's. */
  private readonly fixedPrompts: tf.Tensor2D | null;

  constructor(config: ModelConfig, params: Float32Array, fixedPrompts?: Float32Array) {
    this.config = config;
    this.layout = modelLayout(config);
    if (params.length !== this.layout.total)
      throw new Error(`model: ${params.length} parameters given, the layout has ${this.layout.total}`);
    // Variable names must be unique per process (tests hold several replicas), so they are prefixed.
    const prefix = `cxr${instances++}/`;
    // Each variable gets its own copy (the cpu backend would otherwise keep a view of `params`)
    // and holds it alone (the initial tensor is released), so assignFlat can write in place.
    this.variables = this.layout.entries.map((e) => {
      const t = tf.tensor(params.slice(e.offset, e.offset + e.size), [...e.shape]);
      const v = tf.variable(t, true, prefix + e.name);
      t.dispose();
      this.byName.set(e.name, v);
      return v;
    });
    const fixed = fixedPromptShape(config);
    if (fixed) {
      if (!fixedPrompts || fixedPrompts.length !== fixed[0] * fixed[1])
        throw new Error('model: fixed prompt embeddings missing or of the wrong size');
      this.fixedPrompts = tf.keep(tf.tensor2d(fixedPrompts, fixed));
    } else {
      this.fixedPrompts = null;
    }
  }

  /** `p` as a free function (the shared blocks take parameters by name). */
  readonly param: ParamGetter = (name) => this.p(name);

  p<T extends tf.Tensor = tf.Tensor>(name: string): T {
    const v = this.byName.get(name);
    if (!v) throw new Error(`model: no parameter '${name}'`);
    return v as unknown as T;
  }

  /** Layout name of a variable from its (prefixed) tfjs name. */
  paramName(v: tf.Variable): string {
    return v.name.slice(v.name.indexOf('/') + 1);
  }

  /** Uint8 grayscale [B, H, W] pixels to the normalised float input of the stem. */
  pixelsToInput(pixels: Uint8Array, n: number): tf.Tensor3D {
    const s = this.config.imageSize;
    return tf.tidy(() => {
      const v = tf.div(tf.cast(tf.tensor3d(pixels, [n, s, s], 'int32'), 'float32'), 255);
      if ((this.config.inputNorm ?? 'fixed') === 'fixed') return tf.div(tf.sub(v, PIXEL_MEAN), PIXEL_STD) as tf.Tensor3D;
      const { mean, variance } = tf.moments(v, [1, 2], true);
      return tf.div(tf.sub(v, mean), tf.sqrt(tf.add(variance, IMAGE_VAR_EPS))) as tf.Tensor3D;
    });
  }

  /**
   * Image embeddings [B, D] (not normalised). The conv stem with stride = kernel = patch is
   * computed as patches @ W, which is the same arithmetic without a conv kernel (and its
   * backprop-filter kernel) on the hot path.
   */
  encodeImages(x: tf.Tensor3D): tf.Tensor2D {
    const c = this.config;
    const B = x.shape[0];
    const P = c.patchSize;
    const g = c.imageSize / P;
    const G = g * g;
    const W = c.width;
    const Tk = G + 1;
    const patches = tf.reshape(tf.transpose(tf.reshape(x, [B, g, P, g, P]), [0, 1, 3, 2, 4]), [B * G, P * P]) as tf.Tensor2D;
    const stem = tf.reshape(tf.matMul(patches, tf.reshape(this.p('visual.conv1.weight'), [P * P, W])), [B, G, W]);
    const cls = tf.broadcastTo(tf.reshape(this.p('visual.class_embedding'), [1, 1, W]), [B, 1, W]);
    const tokens = tf.add(tf.concat([cls, stem], 1), this.p('visual.positional_embedding'));
    const eps = c.lnEps ?? 1e-5;
    let h = tf.reshape(tokens, [B * Tk, W]) as tf.Tensor2D;
    if (c.lnPre ?? true) h = layerNorm(h, this.p('visual.ln_pre.weight'), this.p('visual.ln_pre.bias'), eps);
    // Each block in a tidy: its temporaries the backward does not keep (qkv, the raw scores) go at its end, not the forward's.
    const block = (b: string) =>
      tf.tidy(() => residualAttentionBlock(this.param, b, h, B, Tk, c.heads, { eps, quickGelu: c.act === 'quick_gelu' }));
    for (let i = 0; i < c.layers; i++) h = block(`visual.transformer.resblocks.${i}`);
    if (c.visualHead === 'transformer') for (let i = 0; i < visualHeadLayers(c); i++) h = block(`visual.head.resblocks.${i}`);
    // ln_post on every token, then the patch tokens [B, G, W] (open_clip's final_ln_after_pool=False).
    const patchesAfterLnPost = () =>
      tf.slice(
        tf.reshape(layerNorm(h, this.p('visual.ln_post.weight'), this.p('visual.ln_post.bias'), eps), [B, Tk, W]),
        [0, 1, 0],
        [B, G, W],
      ) as tf.Tensor3D;
    let pooled: tf.Tensor2D;
    if (c.pool === 'spatial') {
      // A pooled token must first learn position-independent codes for every sign; this map reads
      // each patch's features where they are, so a sign is learned as soon as its token shows it.
      const grid = tf.reshape(patchesAfterLnPost(), [B * G, W]) as tf.Tensor2D;
      const reduced = tf.reshape(tf.matMul(grid, this.p<tf.Tensor2D>('visual.spatial_pool.reduce.weight')), [
        B,
        G * spatialRank(c),
      ]) as tf.Tensor2D;
      pooled = dense(reduced, this.p('visual.spatial_pool.map.weight'), this.p('visual.spatial_pool.map.bias'));
    } else if ((c.pool ?? 'tok') === 'avg') {
      pooled = tf.mean(patchesAfterLnPost(), 1) as tf.Tensor2D;
    } else {
      const clsOut = tf.reshape(tf.slice(tf.reshape(h, [B, Tk, W]), [0, 0, 0], [B, 1, W]), [B, W]) as tf.Tensor2D;
      pooled = layerNorm(clsOut, this.p('visual.ln_post.weight'), this.p('visual.ln_post.bias'), eps);
    }
    const z = tf.matMul(pooled, this.p<tf.Tensor2D>('visual.proj')) as tf.Tensor2D;
    if (c.visualHead !== 'mlp') return z;
    const hid = gelu(dense(z, this.p('visual.head.fc1.weight'), this.p('visual.head.fc1.bias')));
    return dense(hid, this.p('visual.head.fc2.weight'), this.p('visual.head.fc2.bias'), { residual: z });
  }

  /**
   * The label prompts' embeddings before the text head's MLP [3L, text dim], rows in labelPrompts
   * order: the text tower's output (run now, or fixed once), a file's vectors, or the learnable
   * ones. Under --text-head transformer the head's blocks run on the tower's token states (run
   * now, or fixed once for a frozen tower) before the tower's readout.
   */
  promptEmbeddings(): tf.Tensor2D {
    const c = this.config;
    if (c.head !== 'text') throw new Error('model: the linear head has no text branch');
    const text = c.text;
    if (c.textHead === 'transformer') {
      const tokens = text.kind === 'tower' || text.kind === 'frozen' ? text.tokens : undefined;
      if (!tokens) throw new Error('model: --text-head transformer needs a text tower and its token rows');
      const tower = textTowerOf(c);
      const states = text.kind === 'tower' ? textTowerStates(this.param, tower, tokens) : this.fixedPrompts!;
      return textTowerReadout(this.param, tower, tokens, textHeadBlocks(this.param, tower, tokens, states, textHeadLayers(c)));
    }
    if (text.kind === 'tower') return encodeTextTower(this.param, text.tower, text.tokens);
    return this.fixedPrompts ?? this.p<tf.Tensor2D>('text.prompt_embeddings');
  }

  /** Label-prompt embeddings through the trainable head (text head only). */
  encodeText(): TextEmbeddings {
    const c = this.config;
    const L = c.labels.length;
    const e = this.promptEmbeddings();
    let t = e;
    if (!c.textHead) {
      const h = dense(e, this.p('text.head.fc1.weight'), this.p('text.head.fc1.bias'));
      t = dense(gelu(h), this.p('text.head.fc2.weight'), this.p('text.head.fc2.bias'), { residual: h });
    }
    const [names, positive, negative] = tf.split(t, [L, L, L], 0) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    return { names, positive, negative };
  }

  /**
   * Per-label logits [n, L] of image embeddings: the text head scores by cosine with the label-name
   * embeddings (`names`: encodeText's, computed here unless the caller has them), the linear head by its matrix.
   */
  logits(z: tf.Tensor2D, names?: tf.Tensor2D): tf.Tensor2D {
    if (this.config.head === 'text') return cosineLogits(z, names ?? this.encodeText().names, this.p('cls.log_scale'), this.p('cls.bias'));
    return tf.add(tf.matMul(z, this.p<tf.Tensor2D>('cls.weight')), this.p('cls.bias')) as tf.Tensor2D;
  }

  /**
   * Gradients (keyed by variable name) to one flat vector; a parameter without a gradient gets
   * zeros. `into` (the vector's size) is reused when given: the step keeps one across steps.
   * `variables`: the ones to lay end to end, in layout order (--freeze: the trainable ones, which
   * is the packed vector of shared/trainable.ts); default all, the flat layout.
   */
  async flattenGrads(
    grads: tf.NamedTensorMap,
    into?: Float32Array,
    variables: readonly tf.Variable[] = this.variables,
  ): Promise<Float32Array> {
    const total = variables === this.variables ? this.layout.total : variables.reduce((a, v) => a + v.size, 0);
    if (into && into.length !== total) throw new Error(`flattenGrads: a buffer of ${into.length} for a layout of ${total}`);
    const out = into ?? new Float32Array(total);
    await readConcatenated(
      variables.map((v) => ({ tensor: grads[v.name] ?? null, size: v.size })),
      out,
    );
    return out;
  }

  /**
   * Overwrite every variable from a flat vector in layout order. The variables never keep a view
   * of `params` (their storage is written in place where the backend allows, else copied), so the
   * caller may reuse or move the vector afterwards. On a GPU backend one upload for all of them.
   */
  assignFlat(params: Float32Array): void {
    if (params.length !== this.layout.total) throw new Error(`assignFlat: ${params.length} values for a layout of ${this.layout.total}`);
    assignConcatenated(this.variables, params);
  }

  /** The current parameters as one flat vector in layout order. */
  async readFlat(): Promise<Float32Array> {
    const out = new Float32Array(this.layout.total);
    await readConcatenated(
      this.variables.map((v) => ({ tensor: v, size: v.size })),
      out,
    );
    return out;
  }

  dispose(): void {
    this.variables.forEach((v) => v.dispose());
    this.fixedPrompts?.dispose();
  }
}
