import * as tf from '@tensorflow/tfjs';
import { type ParamGetter, residualAttentionBlock, residualBlockSpecs } from '../blocks.js';
import type { ParamSpec } from '../param-specs.js';
import { type BertTextShape, bertPadMask, bertTextReadout, bertTextSpecs, bertTextStates, encodeBertText } from './bert-text.js';
import { type ClipTextShape, causalMask, clipTextReadout, clipTextSpecs, clipTextStates, encodeClipText } from './clip-text.js';

/** A text tower: CLIP's TextTransformer or an HFTextEncoder over BERT. */
export type TextTowerShape = ClipTextShape | BertTextShape;

export function textTowerSpecs(s: TextTowerShape): ParamSpec[] {
  return s.kind === 'clip' ? clipTextSpecs(s) : bertTextSpecs(s);
}

/** Embeddings [N, embed_dim] of token rows of one length (each with its specials and padding). */
export function encodeTextTower(p: ParamGetter, s: TextTowerShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  return s.kind === 'clip' ? encodeClipText(p, s, ids) : encodeBertText(p, s, ids);
}

/** The token states [N * T, width] after the tower's last block, before its final norm, pooling and projection. */
export function textTowerStates(p: ParamGetter, s: TextTowerShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  return s.kind === 'clip' ? clipTextStates(p, s, ids) : bertTextStates(p, s, ids);
}

/** What follows the blocks (final norm, pooling, projection) on token states [N * T, width]: embeddings [N, embed_dim]. */
export function textTowerReadout(p: ParamGetter, s: TextTowerShape, ids: readonly (readonly number[])[], h: tf.Tensor2D): tf.Tensor2D {
  return s.kind === 'clip' ? clipTextReadout(p, s, ids, h) : bertTextReadout(p, s, ids, h);
}

/** The tower's parameters that follow its blocks (readout), in textTowerSpecs' order. */
export function textTowerTailSpecs(s: TextTowerShape): ParamSpec[] {
  const tail = s.kind === 'clip' ? /(^|\.)(ln_final\.|text_projection$)/ : /^text\.(transformer\.pooler\.|proj\.)/;
  return textTowerSpecs(s).filter((x) => tail.test(x.name));
}

/**
 * The text head's blocks (--text-head transformer): `layers` pre-norm blocks of the tower's width
 * and heads over its token states, attending as the tower does (CLIP causally, BERT not to padding),
 * so rows cut to the longest prompt still give each prompt its full-context result. Their output
 * projections start at zero: the head starts as the identity and the tower's embeddings are
 * unchanged at step 0.
 */
export function textHeadSpecs(s: TextTowerShape, layers: number): ParamSpec[] {
  const W = s.width;
  const M = s.kind === 'clip' ? 4 * W : s.intermediate;
  const out: ParamSpec[] = [];
  for (let i = 0; i < layers; i++)
    out.push(...residualBlockSpecs(`text.head.resblocks.${i}`, W, M, { attnStd: W ** -0.5, fcStd: (2 * W) ** -0.5, outStd: null }));
  return out;
}

/** The text head's blocks on token states [N * T, width] of the token rows `ids` (textHeadSpecs). */
export function textHeadBlocks(
  p: ParamGetter,
  s: TextTowerShape,
  ids: readonly (readonly number[])[],
  h: tf.Tensor2D,
  layers: number,
): tf.Tensor2D {
  const N = ids.length;
  const T = ids[0]!.length;
  const mask = s.kind === 'clip' ? causalMask(T) : bertPadMask(s, ids);
  const quickGelu = s.kind === 'clip' && s.quickGelu;
  for (let i = 0; i < layers; i++)
    h = tf.tidy(() => residualAttentionBlock(p, `text.head.resblocks.${i}`, h, N, T, s.heads, { mask, quickGelu }));
  return h;
}

/** The padding id of the tower's tokenizer: 0 for CLIP (open_clip pads with zeros) and BERT's pad_token_id. */
export function padId(s: TextTowerShape): number {
  return s.kind === 'clip' ? 0 : s.padId;
}

/**
 * Token rows cut to the longest unpadded row and padded to it: every tower here gives each row
 * the output it has at the full context (causal or padding mask), and the work shrinks from the
 * context (77, 256) to the prompts' length.
 */
export function trimTokenRows(s: TextTowerShape, rows: readonly (readonly number[])[]): number[][] {
  const pad = padId(s);
  const lengths = rows.map((r) => {
    let n = r.length;
    while (n > 0 && r[n - 1] === pad) n--;
    return n;
  });
  const T = Math.max(1, ...lengths);
  return rows.map((r) => Array.from({ length: T }, (_, i) => r[i] ?? pad));
}
