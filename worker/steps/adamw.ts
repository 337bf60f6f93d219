import type { ParamLayout } from '../../shared/params.js';
import { kernelOptions } from '../../kernels/options.js';
import { adamwRun } from '../../kernels/simd/adamw.js';
import type { AdamWHyper } from '../../model/train-config.js';

/**
 * AdamW, the learning-rate schedule and gradient clipping as pure functions on flat float32
 * vectors, so that a ZeRO-1 rank can update just its shard of the flat parameter vector.
 */

export interface FlatRange {
  start: number;
  end: number;
}

/** 1 where weight decay applies, per element of the flat layout. */
export function decayMask(layout: ParamLayout): Uint8Array {
  const mask = new Uint8Array(layout.total);
  for (const e of layout.entries) if (e.decay) mask.fill(1, e.offset, e.offset + e.size);
  return mask;
}

/**
 * One AdamW update (PyTorch's torch.optim.AdamW, decoupled decay) of params[range] in place.
 * `params`, `grads` and `decay` are indexed over the whole flat vector; `m` and `v` hold only the
 * range (index i - range.start), which is the shard a ZeRO-1 rank owns. `step` counts from 1.
 * `gradScale` (the clipping factor) is applied to each gradient on the way in, rounded to f32 as
 * scaleInPlace would store it, so clipping costs no pass of its own; `grads` is left as it was.
 * The update runs on kernels/simd/adamw.ts's kernel where wasm SIMD is available and the kernel
 * option `adamw` is on (the default; off: JavaScript, the reference), with the same bits.
 */
export function adamwStep(
  params: Float32Array,
  grads: Float32Array,
  m: Float32Array,
  v: Float32Array,
  range: FlatRange,
  hyper: AdamWHyper,
  step: number,
  decay: Uint8Array,
  gradScale = 1,
): void {
  const { lr, beta1, beta2, eps, weightDecay } = hyper;
  if (m.length !== range.end - range.start || v.length !== m.length)
    throw new Error(`adamwStep: moments hold ${m.length}/${v.length} values for a range of ${range.end - range.start}`);
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  const stepSize = lr / bc1;
  const sqrtBc2 = Math.sqrt(bc2);
  const shrink = 1 - lr * weightDecay;
  const a1 = 1 - beta1;
  const a2 = 1 - beta2;
  // The mask is constant over each parameter tensor: the loop runs over runs of equal decay with
  // the factor hoisted (x * 1 is x, so the arithmetic is the same as multiplying only where it
  // applies). Hoisting 1 - beta also leaves every value bit-identical to the plain formula.
  const simd = kernelOptions().adamw;
  for (let i = range.start; i < range.end; ) {
    const d = decay[i]!;
    let j = i + 1;
    while (j < range.end && decay[j] === d) j++;
    const f = d ? shrink : 1;
    if (simd && adamwRun(params, grads, m, v, i, j, range.start, f, { scale: gradScale, beta1, a1, beta2, a2, stepSize, sqrtBc2, eps })) {
      i = j;
      continue;
    }
    for (let k = i - range.start; i < j; i++, k++) {
      const g = gradScale === 1 ? grads[i]! : Math.fround(grads[i]! * gradScale);
      const mk = beta1 * m[k]! + a1 * g;
      const vk = beta2 * v[k]! + a2 * g * g;
      m[k] = mk;
      v[k] = vk;
      params[i] = params[i]! * f - (stepSize * mk) / (Math.sqrt(vk) / sqrtBc2 + eps);
    }
  }
}

export interface Schedule {
  baseLr: number;
  warmupSteps: number;
  totalSteps: number;
  /** Final learning rate as a fraction of baseLr. */
  minLrRatio: number;
}

/** Linear warmup from 0 over warmupSteps, then cosine decay to minLrRatio * baseLr at totalSteps. `step` counts from 1. */
export function learningRate(s: Schedule, step: number): number {
  if (s.warmupSteps > 0 && step <= s.warmupSteps) return (s.baseLr * step) / s.warmupSteps;
  const span = Math.max(1, s.totalSteps - s.warmupSteps);
  const t = Math.min(1, Math.max(0, (step - s.warmupSteps) / span));
  const min = s.baseLr * s.minLrRatio;
  return min + (s.baseLr - min) * 0.5 * (1 + Math.cos(Math.PI * t));
}

/** Sum of squares of a flat vector (float64 accumulation); ranks can add theirs for a sharded norm. */
export function sumOfSquares(x: Float32Array, range: FlatRange = { start: 0, end: x.length }): number {
  let s = 0;
  for (let i = range.start; i < range.end; i++) s += x[i]! * x[i]!;
  return s;
}

/** The factor that clips to a global norm of maxNorm (1 when already within it, or clipping off). */
export function clipFactor(globalNorm: number, maxNorm: number): number {
  if (!(maxNorm > 0) || globalNorm <= maxNorm) return 1;
  return maxNorm / (globalNorm + 1e-6);
}

/** Scale a range of a flat vector in place (what adamwStep's `gradScale` does to each gradient it reads). */
export function scaleInPlace(x: Float32Array, factor: number, range: FlatRange = { start: 0, end: x.length }): void {
  if (factor === 1) return;
  for (let i = range.start; i < range.end; i++) x[i]! *= factor;
}

/** A run of the flat vector trained at `lrScale` x the scheduled rate (0: frozen, never written). */
export interface LrGroup {
  readonly start: number;
  readonly end: number;
  readonly lrScale: number;
}

/** Runs of equal multiplier over the layout, from one multiplier per entry (model/param-groups.ts). */
export function lrGroups(layout: ParamLayout, perEntry: ArrayLike<number>): LrGroup[] {
  const out: { start: number; end: number; lrScale: number }[] = [];
  layout.entries.forEach((e, k) => {
    const s = perEntry[k]!;
    const last = out.at(-1);
    if (last && last.lrScale === s && last.end === e.offset) last.end = e.offset + e.size;
    else out.push({ start: e.offset, end: e.offset + e.size, lrScale: s });
  });
  return out;
}

/**
 * adamwStep over `range` with a learning rate per group: each group's part of the range is updated
 * at hyper.lr x lrScale (weight decay with it, as BEiT's layer decay does), a frozen group (0) is
 * left untouched, its moments at zero. One group at 1 is exactly adamwStep.
 */
export function adamwStepGroups(
  params: Float32Array,
  grads: Float32Array,
  m: Float32Array,
  v: Float32Array,
  range: FlatRange,
  hyper: AdamWHyper,
  step: number,
  decay: Uint8Array,
  groups: readonly LrGroup[],
  gradScale = 1,
): void {
  for (const g of groups) {
    const a = Math.max(g.start, range.start);
    const b = Math.min(g.end, range.end);
    if (a >= b || g.lrScale === 0) continue;
    const h = g.lrScale === 1 ? hyper : { ...hyper, lr: hyper.lr * g.lrScale };
    adamwStep(
      params,
      grads,
      m.subarray(a - range.start, b - range.start),
      v.subarray(a - range.start, b - range.start),
      { start: a, end: b },
      h,
      step,
      decay,
      gradScale,
    );
  }
}
