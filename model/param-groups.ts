import { UserError } from '../shared/util/errors.js';
import type { ParamLayout } from '../shared/params.js';
import type { ModelConfig } from './config.js';
import { textTowerParams } from './vit.js';

/**
 * Fine-tuning controls as one learning-rate multiplier per parameter (layout entry): `--freeze`
 * (multiplier 0: the parameter is never written), `--head-lr` (heads, prompts and scales at their
 * own rate) and `--lr-layer-decay` (BEiT/ELECTRA layer-wise decay over each tower's depth).
 *
 * A tower parameter has a depth: 0 for what comes before the first block (stem, class and
 * position embeddings, ln_pre; token and position embeddings of a text tower), i + 1 for block i,
 * and blocks + 1 for what follows them (ln_post, the spatial readout, the projection; a text
 * tower's final norm and projection). With decay d its multiplier is d^(blocks + 1 - depth), so the
 * top of each tower trains at the base rate and the stem at d^(blocks + 1) of it.
 */

export type Tower = 'visual' | 'text';

/** `--freeze` values: a whole tower, or all of a tower but its last N blocks (and what follows them). */
export type Freeze = { tower: Tower; keepBlocks: number | null };

export function parseFreeze(values: readonly string[]): Freeze[] {
  return values.map((v) => {
    const m = /^(visual|text)(?:-blocks:(\d+))?$/.exec(v);
    if (!m) throw new UserError(`--freeze '${v}': expected visual, text, visual-blocks:N or text-blocks:N`);
    return { tower: m[1] as Tower, keepBlocks: m[2] === undefined ? null : Number(m[2]) };
  });
}

const CLIP_TEXT_TOP = /^(token_embedding\.|positional_embedding$|transformer\.resblocks\.|ln_final\.|text_projection$)/;

/** Which tower a parameter belongs to and its depth there, or null for heads, prompts and scales. */
export function towerDepth(name: string): { tower: Tower; block: number | null; top: boolean } | null {
  if (name.startsWith('visual.head.') || name.startsWith('text.head.') || name === 'text.prompt_embeddings') return null;
  // CLIP's text tower is top-level in open_clip's CLIP class (token_embedding, transformer.resblocks, ...).
  const tower: Tower | null = name.startsWith('visual.') ? 'visual' : name.startsWith('text.') || CLIP_TEXT_TOP.test(name) ? 'text' : null;
  if (!tower) return null;
  const b = /\.(?:resblocks|layer)\.(\d+)\./.exec(name);
  if (b) return { tower, block: Number(b[1]), top: false };
  // Before the blocks: the stem and the embeddings; everything else of a tower follows them.
  const before = /(conv1|class_embedding|positional_embedding|ln_pre|token_embedding|\.embeddings\.)/.test(name);
  return { tower, block: null, top: !before };
}

export interface GroupOptions {
  /** --lr, the base rate. */
  readonly lr: number;
  /** --head-lr: the rate of heads, prompts and scales (null: --lr). */
  readonly headLr: number | null;
  /** --lr-layer-decay (1: none). */
  readonly layerDecay: number;
  readonly freeze: readonly Freeze[];
}

/**
 * The group options of a run's flags (absent flags: nothing frozen, heads at --lr, no decay). A
 * frozen text tower stays frozen: the part of it the model holds (its readout, under --text-head
 * transformer) is frozen with the flags' choices.
 */
export function groupOptions(cfg: {
  lr: number;
  headLr?: number | null;
  lrLayerDecay?: number;
  freeze?: readonly string[];
  resolved?: { model: ModelConfig };
}): GroupOptions {
  const frozenText = cfg.resolved?.model.text.kind === 'frozen' && textTowerParams(cfg.resolved.model).length > 0;
  return {
    lr: cfg.lr,
    headLr: cfg.headLr ?? null,
    layerDecay: cfg.lrLayerDecay ?? 1,
    freeze: [...parseFreeze(cfg.freeze ?? []), ...(frozenText ? [{ tower: 'text' as const, keepBlocks: null }] : [])],
  };
}

/** One multiplier of --lr per layout entry (0: frozen). */
export function lrMultipliers(layout: ParamLayout, o: GroupOptions): Float64Array {
  if (!(o.layerDecay > 0 && o.layerDecay <= 1)) throw new UserError(`--lr-layer-decay must be in (0, 1], got ${o.layerDecay}`);
  if (o.headLr !== null && !(o.headLr >= 0)) throw new UserError(`--head-lr must be >= 0, got ${o.headLr}`);
  const depth = layout.entries.map((e) => towerDepth(e.name));
  const blocks: Record<Tower, number> = { visual: 0, text: 0 };
  for (const d of depth) if (d && d.block !== null) blocks[d.tower] = Math.max(blocks[d.tower], d.block + 1);
  for (const f of o.freeze) {
    if (blocks[f.tower] === 0 && !layout.entries.some((e) => towerDepth(e.name)?.tower === f.tower))
      throw new UserError(
        `--freeze ${f.tower}${f.keepBlocks === null ? '' : `-blocks:${f.keepBlocks}`}: this model has no ${f.tower} tower`,
      );
    if (f.keepBlocks !== null && f.keepBlocks > blocks[f.tower])
      throw new UserError(`--freeze ${f.tower}-blocks:${f.keepBlocks}: the ${f.tower} tower has only ${blocks[f.tower]} blocks`);
  }
  return Float64Array.from(depth, (d) => {
    if (!d) return o.headLr === null ? 1 : o.lr > 0 ? o.headLr / o.lr : 0;
    const L = blocks[d.tower];
    const level = d.block === null ? (d.top ? L + 1 : 0) : d.block + 1;
    for (const f of o.freeze)
      if (f.tower === d.tower && (f.keepBlocks === null || (level <= L - f.keepBlocks && !(d.top && L > 0)))) return 0;
    return o.layerDecay ** (L + 1 - level);
  });
}

/** The names of the entries a run freezes (multiplier 0), in layout order: what shared/trainable.ts packs out. */
export function frozenEntries(layout: ParamLayout, scales: ArrayLike<number>): string[] {
  return layout.entries.filter((_, k) => scales[k] === 0).map((e) => e.name);
}
