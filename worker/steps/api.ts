import type { SampleBatch } from '../../shared/dataset/reader.js';
import type { WorkerConfig } from '../../shared/config/job.js';
import type { Logger } from '../../shared/util/log.js';
import type { ControlSession } from '../control-client.js';
import { createChecksumStep } from './checksum.js';
import { createTrainStep } from './train.js';

/** Where a step is in the run. */
export interface StepInfo {
  /** Global step, counted from the start of training across epochs. */
  readonly step: number;
  readonly epoch: number;
  readonly epochStep: number;
  /** The training-split rows of this rank's slice, in batch order. */
  readonly indices: readonly number[];
  /** Save a checkpoint after this step (the coordinator's decision, the same on every rank). */
  readonly checkpoint: boolean;
  /** The job stops after this step before the run's end (SIGINT/SIGTERM at the coordinator); `checkpoint` is set too. */
  readonly final: boolean;
}

/** What one step reports (the worker loop adds data wait, total time and the step's position). */
export interface StepResult {
  /** Global loss values, the same on every rank. */
  readonly losses?: Record<string, number>;
  /** Per-rank additive quantities; the coordinator sums them over ranks. */
  readonly counters?: Record<string, number>;
  readonly images: number;
  /** Seconds in compute, embedding all-gather and gradient reduction. */
  readonly timings?: { readonly compute?: number; readonly gather?: number; readonly reduce?: number };
}

/** A rank's training step: one call per global step, on this rank's slice. */
export interface WorkerStep {
  run(batch: SampleBatch, info: StepInfo): Promise<StepResult>;
  /**
   * sha256 of this rank's flat parameters (shared/params-hash.ts), compared across ranks at the
   * rendezvous and every `job.paramsCheckEvery` steps. Absent: the step has no parameters.
   */
  paramsHash?(): string | Promise<string>;
  close?(): Promise<void>;
}

/** Everything a step factory gets after the rendezvous. */
export interface StepContext {
  readonly rank: number;
  readonly world: number;
  /** Every rank's collective endpoint, by rank (connect to these). */
  readonly peers: readonly string[];
  /** Where this rank's collective socket must bind (the port it registered). */
  readonly collectiveBind: string;
  readonly device: number;
  readonly config: WorkerConfig;
  readonly control: ControlSession;
  readonly log: Logger;
}

export type StepFactory = (ctx: StepContext) => Promise<WorkerStep>;

/**
 * The steps a worker can run, selected by the coordinator's `job.step.name`.
 */
export const STEPS: Readonly<Record<string, StepFactory>> = {
  checksum: createChecksumStep,
  train: createTrainStep,
};

export function stepFactory(name: string): StepFactory {
  const f = STEPS[name];
  if (!f)
    throw new Error(
      `the coordinator asked for step '${name}', which this worker does not have (it has: ${Object.keys(STEPS).join(', ')}); run the same cxr-align version everywhere`,
    );
  return f;
}
