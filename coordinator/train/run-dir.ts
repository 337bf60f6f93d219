import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { checkpointsDir, removeUncommitted } from '../../shared/checkpoint/index.js';
import { UserError } from '../../shared/util/errors.js';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import type { Logger } from '../../shared/util/log.js';
import type { RunConfig } from '../../model/train-config.js';
import { writeRunEnvironment } from '../report/environment.js';
import { CONFIG_FILE, isEvalFile, METRICS_FILE, MODEL_JSON_FILE } from '../../shared/run/files.js';

/**
 * Make the run directory ready for the job: refuse to overwrite another run, clear what an
 * interrupted save or an earlier run left, and record config.json and environment.json.
 */
export async function prepareRunDir(
  run: RunConfig,
  o: { startStep: number; resumesInside: boolean; resumeAuto: boolean },
  log: Logger,
): Promise<void> {
  // A finished or interrupted run is never overwritten by a fresh start (its metrics and model
  // would be mixed up), except with --resume auto and nothing committed: a restart of a run that
  // died before its first checkpoint starts it over.
  if (!o.resumesInside && !o.resumeAuto)
    for (const f of [METRICS_FILE, MODEL_JSON_FILE])
      if (await exists(path.join(run.out, f)))
        throw new UserError(
          `--out ${run.out} already holds a run (${f}); choose a new run directory, remove it, or continue it with --resume ${run.out}`,
        );
  await fsp.mkdir(run.out, { recursive: true });
  // A crashed save leaves a step directory without a manifest; no save runs now.
  const removed = await removeUncommitted(checkpointsDir(run.out));
  if (removed.length)
    log.warn(
      `removed ${removed.length} uncommitted checkpoint director${removed.length > 1 ? 'ies' : 'y'} of an interrupted save: ${removed.join(', ')}`,
    );
  await writeJsonAtomic(path.join(run.out, CONFIG_FILE), run);
  await writeRunEnvironment(run.out, { workers: run.workers });
  // Stale results of an earlier run in the same directory would be read as this run's.
  if (o.startStep === 0) for (const f of await fsp.readdir(run.out)) if (isEvalFile(f)) await fsp.rm(path.join(run.out, f));
}

const exists = (file: string) =>
  fsp.stat(file).then(
    () => true,
    () => false,
  );
