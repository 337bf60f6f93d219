import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { openDataset } from '../../shared/dataset/reader.js';
import { UserError } from '../../shared/util/errors.js';
import type { Logger } from '../../shared/util/log.js';
import { createProgress } from '../../shared/util/progress.js';
import { COLLECTIVES_ENV } from '../../shared/config/worker-env.js';
import { augmentPolicy } from '../../shared/augment/policy.js';
import { checkpointConfig, type TrainConfig, type TrainStepConfig } from '../../model/train-config.js';
import type { Manifest, SplitName } from '../../shared/dataset/manifest.js';
import { shardBytes, verifyShards } from '../../shared/dataset/verify.js';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import { JobFailure, type StepSummary } from '../job/control-server.js';
import { type JobResult, runJob } from '../job/run-job.js';
import { serveMetrics, TrainingMetrics } from '../ops/metrics-server.js';
import type { CheckpointFlags } from './checkpoint-flags.js';
import { CheckpointCommits } from './checkpoint-commits.js';
import { metricsRecord, MetricsLog } from './metrics-log.js';
import { resolveRun, type ResolvedRun } from './resolve.js';
import { chooseResume, newestCommitted, resumesInside } from './resume.js';
import { prepareRunDir } from './run-dir.js';
import { EVAL_FILE } from '../../shared/run/files.js';

/** Where and how the workers run (the rest of the run is TrainConfig). */
export interface TrainJobOptions {
  /** HOST:PORT: wait for remote workers there instead of starting local ones. */
  listen?: string;
  advertise?: string;
  dataPort?: number;
  token?: string;
  gpu?: boolean;
  prefetch?: number;
  /** Compare replica parameter hashes every this many steps. */
  paramsCheckEvery?: number;
  /** Serve Prometheus metrics and /healthz on this port (all interfaces with --listen, for the cluster's scraper; else loopback). */
  metricsPort?: number;
  /** Show a progress bar / progress lines (default true). */
  progress?: boolean;
  workerOutput?: (line: string) => void;
  /** Restarts in place after a lost rank, each from the newest committed checkpoint (default 0). */
  maxRestarts?: number;
  /** With `listen`: how long a restart waits for the lost rank's replacement to register. */
  rejoinTimeoutMs?: number;
  /** Checkpoint flags; `resume: 'auto'` resumes the newest committed checkpoint in the run directory, if any. */
  checkpoints?: Partial<CheckpointFlags>;
  log: Logger;
}

export interface TrainJobResult {
  /** Steps run by this invocation (fewer than the total when resumed). */
  steps: number;
  /** The step this invocation started from (0, or the resumed checkpoint's). */
  startStep: number;
  /** The committed checkpoint of the final state. */
  checkpoint: string;
  seconds: number;
  /** sha256 of the final parameters, the same on every rank (checked at the last step). */
  paramsHash: string;
  evalReport: { split: string; mean_auroc: number | null; mean_auroc_competition: number | null } | null;
  /** Restarts in place after lost ranks. */
  restarts: number;
  /** SIGINT/SIGTERM ended the run early, at checkpoint step `step` (no evaluation, no model.bin). */
  stopped?: { signal: NodeJS.Signals; step: number };
}

/**
 * Data-parallel training: N worker processes (local or remote) each run the `train` step on
 * their slice of every global batch (worker/steps/train.ts); this process owns the sampler and the
 * data feed, and writes the run directory: config.json, environment.json, metrics.jsonl; the
 * ranks write model.json/model.bin, eval.json, eval-epoch-E.json and embeddings.json (rank 0).
 */
export async function trainDistributed(cfg: TrainConfig, o: TrainJobOptions): Promise<TrainJobResult> {
  const outStat = await fsp.stat(cfg.out).catch(() => null);
  if (outStat && !outStat.isDirectory())
    throw new UserError(`--out ${cfg.out} is a file, not a run directory; name a new directory (it is created)`);
  const ds = await openDataset(cfg.data);
  try {
    const ck = o.checkpoints ?? {};
    if (cfg.pretrained && ck.initWeights)
      throw new UserError('--pretrained and --init-weights exclude each other: the directory already names the weights');
    const r = await resolveRun(cfg, ds, o.log);
    const saved = checkpointConfig(r.run, r.fixedPrompts, r.source.size);
    const resume = await chooseResume(ck.resume, r.run, saved, r.layout, o.log);
    const startStep = resume?.step ?? 0;
    await verifyData(cfg, ds.manifest, o);
    await prepareRunDir(r.run, { startStep, resumesInside: resumesInside(resume, cfg.out), resumeAuto: ck.resume === 'auto' }, o.log);
    const step: TrainStepConfig = {
      run: r.run,
      fixedPrompts: r.fixedPrompts,
      resume: resume?.dir ?? null,
      initWeights: ck.initWeights ? path.resolve(ck.initWeights) : null,
    };
    return await launch(r, step, startStep, saved, o);
  } finally {
    await ds.close();
  }
}

/** Run the job from `startStep` to the end: metrics, progress and checkpoint commits as the steps come in, then the final evaluation. */
async function launch(
  r: ResolvedRun,
  step: TrainStepConfig,
  startStep: number,
  saved: ReturnType<typeof checkpointConfig>,
  o: TrainJobOptions,
): Promise<TrainJobResult> {
  const cfg = r.run;
  const totalSteps = cfg.resolved.totalSteps;
  const metrics = new TrainingMetrics();
  metrics.setWorkersExpected(cfg.workers);
  const server =
    o.metricsPort !== undefined ? await serveMetrics(metrics, { port: o.metricsPort, ...(o.listen ? { host: '0.0.0.0' } : {}) }) : null;
  if (server) o.log.info(`metrics on ${server.url}`);
  const bar = o.progress === false ? null : createProgress({ label: 'train', total: totalSteps, unit: 'steps', logger: o.log });
  const log = await MetricsLog.open(cfg.out, startStep);
  const checkpoints = new CheckpointCommits({
    out: cfg.out,
    startStep,
    endStep: totalSteps,
    flags: o.checkpoints ?? {},
    world: cfg.workers,
    sampler: r.sampler,
    samplerInfo: { seed: cfg.seed, globalBatch: cfg.batchSize, size: r.source.size },
    config: saved,
    layout: r.layout,
    frozen: r.frozen,
    metrics,
    log: o.log,
  });
  const maxRestarts = o.maxRestarts ?? 0;
  const restarts: RestartRecord[] = [];
  let from = startStep;
  let lastDone = startStep;
  const observe = stepObserver(cfg.workers, r.layout.total, log, metrics, bar);
  let train = step;
  try {
    let result: JobResult;
    for (;;) {
      try {
        result = await runJob({
          workers: cfg.workers,
          listen: o.listen,
          advertise: o.advertise,
          dataPort: o.dataPort,
          token: o.token,
          gpu: o.gpu,
          workerEnv: COLLECTIVES_ENV,
          workerOutput: o.workerOutput,
          step: { name: 'train' },
          config: { train },
          source: r.source,
          seed: cfg.seed,
          globalBatch: cfg.batchSize,
          generation: restarts.length + 1,
          startStep: from,
          steps: totalSteps - from,
          prefetch: o.prefetch,
          augment: augmentPolicy(cfg.augment ?? 'none', cfg.augmentHflip ?? 0),
          checkpointAfter: checkpoints.after,
          onCheckpointShard: checkpoints.onShard,
          paramsCheckEvery: o.paramsCheckEvery ?? 50,
          stopOnSignal: true,
          // A restart with remote workers waits this long for the lost rank's replacement.
          ...(restarts.length > 0 && o.listen && o.rejoinTimeoutMs ? { rendezvousTimeoutMs: o.rejoinTimeoutMs } : {}),
          onRendezvous: (w) => metrics.setWorkersUp(w.length),
          onStep: (s) => {
            lastDone = s.step + 1;
            observe(s);
          },
          log: o.log,
        });
        break;
      } catch (e) {
        await checkpoints.drain();
        const newest = await newestCommitted(cfg, saved, r.layout, o.log);
        if (!(e instanceof JobFailure) || !e.restartable || restarts.length >= maxRestarts) {
          if (!(e instanceof JobFailure) || e.exitCode !== 1) throw e;
          const gaveUp =
            e.restartable && maxRestarts > 0
              ? `; gave up after ${restarts.length} restart${restarts.length === 1 ? '' : 's'} (--max-restarts ${maxRestarts})`
              : '';
          throw new JobFailure(
            `${e.message}${gaveUp}\n${newest ? `continue from ${newest.dir} (step ${newest.step}) with --resume ${cfg.out}` : 'no checkpoint was committed: a rerun starts over'}`,
            e.rank,
            e.userError,
          );
        }
        // Go on from the newest committed checkpoint of this run, else from where this invocation began.
        from = newest?.step ?? startStep;
        const resumeDir = newest?.dir ?? step.resume;
        train = { ...step, resume: resumeDir };
        const record: RestartRecord = {
          at: new Date().toISOString(),
          failedAfterStep: lastDone,
          resumedAt: from,
          checkpoint: resumeDir,
          reason: e.message.split('\n')[0]!,
        };
        restarts.push(record);
        metrics.incRestarts('rank_lost');
        await writeJsonAtomic(path.join(cfg.out, 'restarts.json'), restarts);
        o.log.warn(
          `restart ${restarts.length} of at most ${maxRestarts}: ${record.reason}; starting ${cfg.workers} fresh worker${cfg.workers > 1 ? 's' : ''} from ${resumeDir ?? 'the start'} (step ${from})`,
        );
        await log.rewind(from);
        await checkpoints.restartAt(from);
      }
    }
    await log.flushed();
    // The job's last step: the run's end, or where a signal stopped it.
    const finalStep = result.stopped ? result.stopped.step + 1 : totalSteps;
    const checkpoint = await checkpoints.settled(finalStep);
    bar?.stop();
    const evalReport = cfg.eval !== 'none' && !result.stopped ? await finalEvaluation(cfg.out, metrics) : null;
    metrics.setPhase('done');
    return {
      steps: finalStep - startStep,
      startStep,
      checkpoint,
      seconds: result.seconds,
      paramsHash: result.lastStep?.paramsHash ?? '',
      evalReport,
      restarts: restarts.length,
      ...(result.stopped ? { stopped: { signal: result.stopped.signal, step: finalStep } } : {}),
    };
  } catch (e) {
    await checkpoints.drain();
    metrics.setPhase('failed');
    bar?.stop();
    throw e;
  } finally {
    await log.close();
    await server?.close();
  }
}

/**
 * Every shard the run reads (train, and the evaluated split) against manifest.json's sha256
 * before step 0, with a progress bar: a damaged shard is refused by name instead of training
 * to other weights (docs/reliability.md; the cost is in docs/performance.md, "Verified data").
 */
async function verifyData(cfg: TrainConfig, manifest: Manifest, o: TrainJobOptions): Promise<void> {
  const splits: SplitName[] = cfg.eval === 'none' ? ['train'] : ['train', cfg.eval];
  const total = shardBytes(manifest, splits);
  const bar =
    o.progress === false ? null : createProgress({ label: 'verify data', total: Math.ceil(total / 1e6), unit: 'MB', logger: o.log });
  let done = 0;
  const t0 = performance.now();
  try {
    await verifyShards(cfg.data, manifest, splits, (n) => bar?.update(Math.floor((done += n) / 1e6)));
  } finally {
    bar?.stop();
  }
  o.log.info(
    `verified ${(total / 1e6).toFixed(1)} MB of ${splits.join(' and ')} shards against manifest.json in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

/** One restart in place, as restarts.json records it. */
export interface RestartRecord {
  readonly at: string;
  /** The last step every rank completed before the failure. */
  readonly failedAfterStep: number;
  /** The step training went on from. */
  readonly resumedAt: number;
  readonly checkpoint: string | null;
  readonly reason: string;
}

/** What each finished step feeds: metrics.jsonl, the Prometheus metrics and the progress bar. */
function stepObserver(
  workers: number,
  parameters: number,
  log: MetricsLog,
  metrics: TrainingMetrics,
  bar: ReturnType<typeof createProgress> | null,
): (s: StepSummary) => void {
  let lastAt = performance.now();
  // The bar shows the run's mean rate: a step that also ran an epoch's evaluation would show a tenth of it.
  const barStart = performance.now();
  let barImages = 0;
  return (s) => {
    const now = performance.now();
    // Step time as the coordinator sees it (reports arrive in step order): includes every
    // rank's wait for the slowest, which the per-rank totals do not.
    const rec = metricsRecord(s, Math.max(s.timings.total, (now - lastAt) / 1000));
    lastAt = now;
    log.append(rec);
    metrics.observeStep(rec);
    // The ZeRO-1 reduce-scatter + parameter all-gather move an all-reduce's bytes.
    if (workers > 1 && rec.time_reduce_s > 0) metrics.observeCollective('allreduce', parameters * 4, rec.time_reduce_s, workers);
    barImages += s.images;
    bar?.update(rec.step, { epoch: rec.epoch, loss: rec.loss.toFixed(4), 'img/s': (barImages / ((now - barStart) / 1000)).toFixed(1) });
  };
}

/** The final evaluation the ranks wrote to eval.json, for the summary line and the metrics. */
async function finalEvaluation(out: string, metrics: TrainingMetrics): Promise<TrainJobResult['evalReport']> {
  const report = JSON.parse(await fsp.readFile(path.join(out, EVAL_FILE), 'utf8'));
  metrics.observeEval(report as unknown as Parameters<TrainingMetrics['observeEval']>[0]);
  return report;
}
