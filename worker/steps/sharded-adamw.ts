import type { ParamLayout } from '../../shared/params.js';
import type { MetricsRecord } from '../../shared/run/files.js';
import { shardRange, shardRanges } from '../../shared/shard.js';
import { pack, unpack, type Packing } from '../../shared/trainable.js';
import { DEFAULT_ADAMW, type RunConfig } from '../../model/train-config.js';
import type { ThreadedProcessGroup } from '../collectives/threaded-group.js';
import {
  adamwStep,
  adamwStepGroups,
  clipFactor,
  decayMask,
  type FlatRange,
  type LrGroup,
  learningRate,
  lrGroups,
  sumOfSquares,
  type Schedule,
} from './adamw.js';
import type { StepTerms } from './forward-backward.js';

/**
 * The optimizer's state on one rank: the whole flat parameter vector, AdamW's moments for its
 * shard (of the packed trainable vector with --freeze).
 */
export interface OptimizerState {
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

/** What one update reports: the global loss values and its seconds in collectives and in AdamW. */
export interface UpdateReport {
  readonly losses: Pick<MetricsRecord, 'loss' | 'loss_classification' | 'loss_contrastive' | 'loss_label_prior' | 'lr' | 'grad_norm'>;
  readonly reduceSeconds: number;
  readonly optSeconds: number;
}

/**
 * AdamW sharded ZeRO-1 style, with the collectives it needs: the flat gradient is reduce-scattered,
 * the global norm comes from an all-reduce of per-shard sums of squares (with the loss terms, in
 * one small message), AdamW updates this rank's shardRange (it holds m and v for that range only)
 * with clipping folded in, and the updated ranges are all-gathered. All collectives run in a fixed
 * order, so every rank ends each update with bit-identical parameters. World 1: no collectives.
 *
 * With frozen entries (`packing`) all of this runs on the packed trainable vector instead, as
 * PyTorch DDP with requires_grad=False: the gradient, its reduce-scatter, the shards, the moments
 * and the parameter all-gather cover the trainable elements only, and the gathered ones are
 * written back into the whole vector.
 */
export class ShardedAdamW {
  /** The rank's range of the vector AdamW runs on (the flat one, or the packed one with frozen entries). */
  readonly own: FlatRange;
  private readonly paramCounts: number[];
  private readonly mask: Uint8Array;
  private readonly hyper;
  private readonly schedule: Schedule;
  private readonly clipNorm: number;
  /** Runs of AdamW's vector at their own rate (--head-lr, --lr-layer-decay; --freeze's zeros), or null: all at the schedule's. */
  private readonly groups: LrGroup[] | null;
  /** The trainable entries packed out of the flat vector (--freeze), or null: every entry trains. */
  private readonly packing: Packing | null;
  /**
   * The flat gradient: filled by forward-backward, moved to the comm thread and back by the
   * reduce-scatter, and filled again by the next step.
   */
  private grad: Float32Array;
  /** The trainable parameters packed (frozen entries only): what AdamW writes and the ranks all-gather. */
  private packed: Float32Array | null;

  constructor(
    private readonly pg: ThreadedProcessGroup | null,
    private state: OptimizerState,
    layout: ParamLayout,
    o: { rank: number; world: number; run: RunConfig; lrScales?: ArrayLike<number> | null; packing?: Packing | null },
  ) {
    this.packing = o.packing ?? null;
    // AdamW's vector: the flat layout, or the trainable entries packed, each with its multiplier.
    const frozen = new Set(this.packing?.frozen);
    const vector = this.packing?.layout ?? layout;
    const scales = o.lrScales && Array.from(o.lrScales).filter((_, k) => !frozen.has(layout.entries[k]!.name));
    this.groups = scales && (!this.packing || scales.some((s) => s !== 1)) ? lrGroups(vector, scales) : null;
    this.own = shardRange(vector.total, o.world, o.rank);
    this.paramCounts = shardRanges(vector.total, o.world).map((s) => s.end - s.start);
    this.mask = decayMask(vector);
    this.hyper = { ...DEFAULT_ADAMW, weightDecay: o.run.weightDecay, lr: 0 };
    const total = o.run.resolved.totalSteps;
    this.schedule = { baseLr: o.run.lr, warmupSteps: Math.min(o.run.warmupSteps, total), totalSteps: total, minLrRatio: o.run.minLrRatio };
    this.clipNorm = o.run.clipNorm;
    this.grad = new Float32Array(vector.total);
    this.packed = this.packing && pack(this.packing, state.params);
    if (state.m.length !== this.own.end - this.own.start)
      throw new Error(`ShardedAdamW: moments of ${state.m.length} for a shard of ${this.own.end - this.own.start}`);
  }

  /** The whole flat parameter vector, current after every update. */
  get params(): Float32Array {
    return this.state.params;
  }

  /** AdamW's moments for this rank's range (`own`). */
  get moments(): { m: Float32Array; v: Float32Array } {
    return { m: this.state.m, v: this.state.v };
  }

  /** The buffer the next forward-backward writes its flat gradient into. */
  get gradientBuffer(): Float32Array {
    return this.grad;
  }

  /** One update from this rank's gradient `grads` (the gradientBuffer) and loss terms; `step` counts from 1. */
  async update(grads: Float32Array, terms: StepTerms, step: number): Promise<UpdateReport> {
    const tReduce = performance.now();
    // The gradient moves to the comm thread and comes back with this rank's range summed.
    if (this.pg) grads = await this.pg.reduceScatter(grads);
    this.grad = grads;
    // The global norm and the loss terms in one small all-reduce. The float64 sum of squares
    // travels as a float32 pair (hi, lo) so that the norm keeps its precision.
    const ss = sumOfSquares(grads, this.own);
    const hi = Math.fround(ss);
    const small = Float32Array.of(hi, ss - hi, terms.classification, terms.contrastive, terms.labelPrior, terms.total);
    if (this.pg) await this.pg.allReduce(small);
    const reduceSeconds1 = (performance.now() - tReduce) / 1000;
    const norm = Math.sqrt(small[0]! + small[1]!);
    if (!Number.isFinite(norm)) throw new Error(`step ${step}: the gradient is not finite (loss ${small[5]}); lower --lr`);
    const tOpt = performance.now();
    this.hyper.lr = learningRate(this.schedule, step);
    // Clipping's scale is applied as AdamW reads each gradient (with the bits of scaling first).
    const { m, v } = this.state;
    const params = this.packed ?? this.state.params;
    const clip = clipFactor(norm, this.clipNorm);
    if (this.groups) adamwStepGroups(params, grads, m, v, this.own, this.hyper, step, this.mask, this.groups, clip);
    else adamwStep(params, grads, m, v, this.own, this.hyper, step, this.mask, clip);
    const optSeconds = (performance.now() - tOpt) / 1000;
    const tGather = performance.now();
    // The parameters move to the comm thread and come back with the other ranks' ranges filled in.
    if (this.packing) {
      this.packed = this.pg ? await this.pg.allGatherVInPlace(params, this.paramCounts) : params;
      unpack(this.packing, this.packed, this.state.params);
    } else if (this.pg) this.state.params = await this.pg.allGatherVInPlace(params, this.paramCounts);
    const reduceSeconds = reduceSeconds1 + (performance.now() - tGather) / 1000;
    const losses = {
      loss: small[5]!,
      loss_classification: small[2]!,
      loss_contrastive: small[3]!,
      loss_label_prior: small[4]!,
      lr: this.hyper.lr,
      grad_norm: norm,
    };
    return { losses, reduceSeconds, optSeconds };
  }
}
