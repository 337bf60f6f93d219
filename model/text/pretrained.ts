import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { fromOpenClipLayout, openClipShape } from '../../shared/interop/open-clip.js';
import { openStateDict, type StateDict } from '../../shared/interop/state-dict.js';
import { UserError } from '../../shared/util/errors.js';
import type { ParamGetter } from '../blocks.js';
import type { TextSource, TextTowerMode } from '../config.js';
import { labelPrompts } from '../vit.js';
import type { PretrainedDir } from '../pretrained/dir.js';
import { BERT_POOLERS, type BertPooler, type BertProj, type BertTextShape } from './bert-text.js';
import type { ClipTextShape } from './clip-text.js';
import { loadTokenizer, type PromptTokenizer } from './tokenizer.js';
import { encodeTextTower, type TextTowerShape, textTowerSpecs, textTowerStates, trimTokenRows } from './tower.js';

/**
 * The text side of a pretrained directory: which tower `model_cfg.text_cfg` describes, its
 * weights, and its tokenizer. CLIP's TextTransformer is described by the config alone; for an
 * HFTextEncoder (`text_cfg.hf_model_name`) the hub directory ships no BERT config, so the sizes
 * come from the weights' shapes, and heads (width / 64, BERT's head size), LayerNorm eps (1e-12)
 * and the pad id from a Hugging Face `config.json` beside them when there is one.
 */
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

export function textTowerShape(pd: PretrainedDir, sd: StateDict): TextTowerShape {
  const t = pd.textCfg;
  const at = (k: string, why: string) => new UserError(`${pd.configFile}: model_cfg.text_cfg.${k} ${why}`);
  const int = (k: string, dflt: number): number => {
    const v = t[k] ?? dflt;
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw at(k, `must be a positive integer, is ${JSON.stringify(v)}`);
    return v as number;
  };
  if (typeof t.hf_model_name === 'string' && t.hf_model_name) return bertShape(pd, sd, int('context_length', 77));
  for (const k of ['embed_cls', 'no_causal_mask', 'proj_bias', 'qk_norm', 'scaled_cosine_attn', 'scale_heads', 'scale_attn', 'scale_fc'])
    if (t[k] === true) throw at(k, "is true; this trainer reads CLIP's text transformer (causal, no class token, no projection bias)");
  if (t.ls_init_value !== undefined && t.ls_init_value !== null) throw at('ls_init_value', 'is set (layer scale is not read)');
  if ((t.pool_type ?? 'argmax') !== 'argmax')
    throw at('pool_type', `is '${String(t.pool_type)}'; only 'argmax' (the end-of-text token) is read`);
  if ((t.proj_type ?? 'linear') !== 'linear') throw at('proj_type', `is '${String(t.proj_type)}'; only 'linear' is read`);
  if ((t.mlp_ratio ?? 4) !== 4) throw at('mlp_ratio', `is ${String(t.mlp_ratio)}; only 4 is read`);
  const width = int('width', 512);
  const heads = int('heads', 8);
  if (width % heads !== 0) throw at('heads', `${heads} does not divide the width ${width}`);
  const custom = pd.raw.model_cfg !== undefined && isObj(pd.raw.model_cfg) && pd.raw.model_cfg.custom_text === true;
  // The CLIP class keeps the text tower's tensors at the top level, CustomTextCLIP under `text.`;
  // the weights decide when the config does not say.
  const prefix: ClipTextShape['prefix'] =
    custom || (!sd.tensors.has('token_embedding.weight') && sd.tensors.has('text.token_embedding.weight')) ? 'text.' : '';
  return {
    kind: 'clip',
    vocabSize: int('vocab_size', 49408),
    contextLength: int('context_length', 77),
    width,
    heads,
    layers: int('layers', 12),
    embedDim: pd.embedDim,
    quickGelu: pd.quickGelu,
    prefix,
  };
}

function bertShape(pd: PretrainedDir, sd: StateDict, contextLength: number): BertTextShape {
  const t = pd.textCfg;
  const file = sd.path;
  const tensor = (name: string, rank: number): readonly number[] => {
    const x = sd.tensors.get(name);
    if (!x)
      throw new UserError(
        `${file}: no tensor '${name}'; text_cfg.hf_model_name says the text tower is open_clip's HFTextEncoder over BERT`,
      );
    if (x.shape.length !== rank)
      throw new UserError(`${file}: tensor '${name}' has shape ${JSON.stringify(x.shape)}, expected ${rank} dimensions`);
    return x.shape;
  };
  const [vocabSize, width] = tensor('text.transformer.embeddings.word_embeddings.weight', 2) as [number, number];
  const maxPositions = tensor('text.transformer.embeddings.position_embeddings.weight', 2)[0]!;
  const typeVocabSize = tensor('text.transformer.embeddings.token_type_embeddings.weight', 2)[0]!;
  const intermediate = tensor('text.transformer.encoder.layer.0.intermediate.dense.weight', 2)[0]!;
  let layers = 0;
  while (sd.tensors.has(`text.transformer.encoder.layer.${layers}.attention.self.query.weight`)) layers++;
  const hfFile = path.join(pd.dir, 'config.json');
  const hf: Obj = existsSync(hfFile) ? (JSON.parse(readFileSync(hfFile, 'utf8')) as Obj) : {};
  if (hf.hidden_act !== undefined && hf.hidden_act !== 'gelu')
    throw new UserError(`${hfFile}: hidden_act is '${String(hf.hidden_act)}'; only BERT's exact 'gelu' is read`);
  const heads = typeof hf.num_attention_heads === 'number' ? hf.num_attention_heads : Math.max(1, Math.round(width / 64));
  if (width % heads !== 0) throw new UserError(`${hfFile}: num_attention_heads ${heads} does not divide the width ${width}`);
  if (contextLength > maxPositions)
    throw new UserError(
      `${pd.configFile}: model_cfg.text_cfg.context_length ${contextLength} exceeds the ${maxPositions} position embeddings of ${file}`,
    );
  // Older configs (BiomedCLIP's) name the fields `pooler_type` and `proj`. open_clip given no
  // pooler type builds BERT without its pooling layer and reads the [CLS] row.
  const pooler = (t.hf_pooler_type ?? t.pooler_type ?? 'cls_last_hidden_state_pooler') as BertPooler;
  if (!BERT_POOLERS.includes(pooler))
    throw new UserError(
      `${pd.configFile}: model_cfg.text_cfg.hf_pooler_type is '${String(pooler)}'; one of ${BERT_POOLERS.join(', ')} is read`,
    );
  const projType = t.hf_proj_type ?? t.proj ?? null;
  let proj: BertProj;
  if (projType === 'linear' || projType === 'mlp') proj = projType;
  else if (projType === null && width === pd.embedDim) proj = 'none';
  else throw new UserError(`${pd.configFile}: model_cfg.text_cfg.hf_proj_type is ${JSON.stringify(projType)}; 'linear' or 'mlp' is read`);
  return {
    kind: 'bert',
    vocabSize,
    contextLength,
    maxPositions,
    typeVocabSize,
    width,
    heads,
    layers,
    intermediate,
    eps: typeof hf.layer_norm_eps === 'number' ? hf.layer_norm_eps : 1e-12,
    padId: typeof hf.pad_token_id === 'number' ? hf.pad_token_id : 0,
    embedDim: pd.embedDim,
    pooler,
    proj,
  };
}

/** The tower's tensors from the weights file in the layout's TF layouts; a missing tensor or another shape names the tensor. */
export async function readTextTowerParams(shape: TextTowerShape, sd: StateDict): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const s of textTowerSpecs(shape)) {
    const t = sd.tensors.get(s.name);
    if (!t)
      throw new UserError(
        `${sd.path}: no tensor '${s.name}' (the ${shape.kind === 'clip' ? 'CLIP' : 'BERT'} text tower the config describes needs it)`,
      );
    const want = openClipShape(s);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
      throw new UserError(
        `${sd.path}: tensor '${s.name}' has shape ${JSON.stringify(t.shape)}, the config's text tower needs ${JSON.stringify(want)}`,
      );
    out.set(s.name, fromOpenClipLayout(s, await sd.readF32(s.name)));
  }
  return out;
}

/** A pretrained text tower ready to encode: its shape, tokenizer and weights (TF layouts, by name). */
export interface PretrainedText {
  readonly shape: TextTowerShape;
  readonly tokenizer: PromptTokenizer;
  readonly params: ReadonlyMap<string, Float32Array>;
}

export async function loadPretrainedText(pd: PretrainedDir, sd: StateDict): Promise<PretrainedText> {
  const shape = textTowerShape(pd, sd);
  const tokenizer = loadTokenizer(pd.dir, shape.kind);
  if (shape.kind === 'bert' && tokenizer.padId !== shape.padId)
    throw new UserError(`${tokenizer.source}: [PAD] is id ${tokenizer.padId}, the text tower's pad_token_id is ${shape.padId}`);
  return { shape, tokenizer, params: await readTextTowerParams(shape, sd) };
}

/** The prompts' token rows (specials, padding), cut to the longest prompt (tower.ts trimTokenRows). */
export function promptTokenRows(t: Pick<PretrainedText, 'shape' | 'tokenizer'>, prompts: readonly string[]): number[][] {
  const rows = prompts.map((p) => t.tokenizer.encode(p, t.shape.contextLength));
  const vocab = t.shape.vocabSize;
  for (const [i, r] of rows.entries())
    if (r.some((id) => id >= vocab))
      throw new UserError(`${t.tokenizer.source}: prompt '${prompts[i]}' has a token id beyond the text tower's vocabulary of ${vocab}`);
  return trimTokenRows(t.shape, rows);
}

/** Text embeddings [prompts.length * embedDim] (not normalised) of the prompts under the pretrained tower. */
export async function embedPrompts(t: PretrainedText, prompts: readonly string[]): Promise<Float32Array> {
  const rows = promptTokenRows(t, prompts);
  return withTower(t, (p) => encodeTextTower(p, t.shape, rows));
}

/** The tower's last hidden states [rows.length * T * width] of token rows of one length T (before its readout). */
export async function promptStates(t: PretrainedText, rows: readonly (readonly number[])[]): Promise<Float32Array> {
  return withTower(t, (p) => textTowerStates(p, t.shape, rows));
}

/** `f` on the tower's weights as tensors, its result read back. */
async function withTower(t: PretrainedText, f: (p: ParamGetter) => tf.Tensor): Promise<Float32Array> {
  const y = tf.tidy(() => {
    const tensors = new Map(textTowerSpecs(t.shape).map((s) => [s.name, tf.tensor(t.params.get(s.name)!, s.shape)]));
    return f(((name: string) => tensors.get(name)!) as ParamGetter);
  });
  // Read with await: WebGPU has no synchronous read in Node.
  const out = Float32Array.from(await y.data());
  y.dispose();
  return out;
}

/**
 * The prompts' source for a run started from a pretrained directory (--text-tower): `frozen`
 * encodes them once here and fixes the vectors (like --text-embeddings, stored with the model);
 * `finetune` puts the tower in the model, its weights read by every rank with the image tower's.
 * Without a mode, frozen when the weights hold the text tower, else null (learnable prompts).
 * `states` (--text-head transformer): a frozen tower fixes its prompts' last hidden states instead,
 * for the head's blocks to attend over.
 */
export async function pretrainedTextSource(
  pd: PretrainedDir,
  labels: readonly string[],
  mode: TextTowerMode | null,
  opts: { states?: boolean } = {},
): Promise<{ text: TextSource; fixedPrompts: Float32Array | null } | null> {
  const sd = await openStateDict(pd.weightsFile);
  try {
    // CLIP's token embedding (top-level or under text.) or an HFTextEncoder's tensors.
    const hasTower = [...sd.tensors.keys()].some((n) => /^(text\.)?token_embedding\.weight$|^text\.transformer\./.test(n));
    if (!mode && !hasTower) return null;
    const text = await loadPretrainedText(pd, sd);
    const prompts = labelPrompts(labels);
    const dim = text.shape.embedDim;
    if ((mode ?? 'frozen') === 'frozen' && opts.states) {
      const tokens = promptTokenRows(text, prompts);
      return { text: { kind: 'frozen', dim, tower: text.shape, tokens }, fixedPrompts: await promptStates(text, tokens) };
    }
    if ((mode ?? 'frozen') === 'frozen')
      return { text: { kind: 'frozen', dim, tower: text.shape }, fixedPrompts: await embedPrompts(text, prompts) };
    return { text: { kind: 'tower', dim, tower: text.shape, tokens: promptTokenRows(text, prompts) }, fixedPrompts: null };
  } finally {
    await sd.close();
  }
}
