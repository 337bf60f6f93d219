import type * as tf from '@tensorflow/tfjs';
import type { ParamGetter } from '../blocks.js';
import type { ParamSpec } from '../param-specs.js';
import { type BertTextShape, bertTextSpecs, encodeBertText } from './bert-text.js';
import { type ClipTextShape, clipTextSpecs, encodeClipText } from './clip-text.js';

/** A text tower: CLIP's TextTransformer or an HFTextEncoder over BERT. */
export type TextTowerShape = ClipTextShape | BertTextShape;

export function textTowerSpecs(s: TextTowerShape): ParamSpec[] {
  return s.kind === 'clip' ? clipTextSpecs(s) : bertTextSpecs(s);
}

/** Embeddings [N, embed_dim] of token rows of one length (each with its specials and padding). */
export function encodeTextTower(p: ParamGetter, s: TextTowerShape, ids: readonly (readonly number[])[]): tf.Tensor2D {
  return s.kind === 'clip' ? encodeClipText(p, s, ids) : encodeBertText(p, s, ids);
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
