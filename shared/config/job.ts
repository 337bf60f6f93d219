import type { AugmentPolicy } from '../augment/policy.js';

/**
 * The part of the resolved config every worker reads (under the key `job`); the rest of the
 * config (model, optimizer, losses) passes through to the step untouched.
 */
export interface WorkerJobSection {
  /** Which step function the worker runs (worker/steps.ts) and its options. */
  readonly step: { readonly name: string; readonly options: Record<string, unknown> };
  readonly world: number;
  readonly seed: number;
  readonly globalBatch: number;
  readonly startStep: number;
  readonly endStep: number;
  readonly stepsPerEpoch: number;
  readonly prefetch: number;
  /** Training-time augmentation of every fed slice (keyed by job.seed, epoch, row), or null/absent for none. */
  readonly augment?: AugmentPolicy | null;
  /** Compare parameter hashes every this many steps (0: only at rendezvous). */
  readonly paramsCheckEvery: number;
  /** A worker that cannot reach the coordinator for this long stops. */
  readonly heartbeatTimeoutMs: number;
}

/** The resolved config as a worker receives it in RegisterReply.config_json. */
export interface WorkerConfig {
  readonly job: WorkerJobSection;
  readonly [key: string]: unknown;
}

/** Parse config_json and check the `job` section the worker relies on. */
export function parseWorkerConfig(json: string): WorkerConfig {
  const c = JSON.parse(json) as Partial<WorkerConfig>;
  const j = c.job as Partial<WorkerJobSection> | undefined;
  const ints = [
    'world',
    'seed',
    'globalBatch',
    'startStep',
    'endStep',
    'stepsPerEpoch',
    'prefetch',
    'paramsCheckEvery',
    'heartbeatTimeoutMs',
  ] as const;
  if (!j || typeof j.step?.name !== 'string')
    throw new Error('config from the coordinator has no job.step.name: coordinator and worker versions differ');
  for (const k of ints)
    if (!Number.isInteger(j[k]))
      throw new Error(`config from the coordinator has no integer job.${k}: coordinator and worker versions differ`);
  return c as WorkerConfig;
}
