import * as path from 'node:path';
import { checkpointsDir, listCheckpoints, resolveCheckpoint } from '../../shared/checkpoint/index.js';
import type { ParamLayout } from '../../shared/params.js';
import { UserError } from '../../shared/util/errors.js';
import type { Logger } from '../../shared/util/log.js';
import type { checkpointConfig, RunConfig } from '../../model/train-config.js';

/** The committed checkpoint a run continues from. */
export interface ResumePoint {
  readonly dir: string;
  readonly step: number;
}

/**
 * The checkpoint `--resume` names (a run directory, a step directory, or `auto`: the newest in the
 * run's own directory, if any), checked against what the run must share with it; null: start fresh.
 */
export async function chooseResume(
  resume: string | undefined,
  run: RunConfig,
  saved: ReturnType<typeof checkpointConfig>,
  layout: ParamLayout,
  log: Logger,
): Promise<ResumePoint | null> {
  if (!resume) return null;
  const ckRoot = checkpointsDir(run.out);
  const from = resume === 'auto' ? run.out : resume;
  const any = resume !== 'auto' || (await listCheckpoints(ckRoot)).some((c) => c.committed);
  if (!any) {
    log.info(`--resume auto: no committed checkpoint in ${ckRoot}; starting fresh`);
    return null;
  }
  const r = await resolveCheckpoint(from, {
    layout,
    requireConfig: {
      'model.preset': saved.model.preset,
      'model.head': saved.model.head,
      'model.pretrained.sha256': saved.model.pretrained?.sha256,
      labelSet: saved.labelSet,
      seed: saved.seed,
      globalBatch: saved.globalBatch,
      trainRows: saved.trainRows,
    },
    onWarning: (msg) => log.warn(msg),
  });
  const totalSteps = run.resolved.totalSteps;
  log.info(
    `resuming from ${r.dir}: step ${r.manifest.step} of ${totalSteps}, saved by ${r.manifest.world} worker${r.manifest.world > 1 ? 's' : ''}`,
  );
  if (r.manifest.step >= totalSteps)
    throw new UserError(
      `${r.dir} is at step ${r.manifest.step}: nothing left of ${totalSteps} steps (--steps and --epochs are totals; raise them to train on)`,
    );
  return { dir: r.dir, step: r.manifest.step };
}

/** Whether the checkpoint lies inside the run directory (the run continues itself). */
export function resumesInside(point: ResumePoint | null, out: string): boolean {
  return point !== null && path.resolve(point.dir).startsWith(path.resolve(out) + path.sep);
}
