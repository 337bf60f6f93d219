import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  checkpointDue,
  checkpointsDir,
  commitCheckpoint,
  listCheckpoints,
  pruneCheckpoints,
  removeUncommitted,
  resolveCheckpoint,
  stepDir,
} from '../../shared/checkpoint/index.js';
import type { ShardWritten } from '../../shared/checkpoint/shard-writer.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { UserError } from '../../shared/util/errors.js';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import type { Logger } from '../../shared/util/log.js';
import { createProgress } from '../../shared/util/progress.js';
import { COLLECTIVES_ENV } from '../../shared/config/worker-env.js';
import { balancedPosWeights, labelPriorTarget, uncertaintyPolicies } from '../../model/losses.js';
import { withVisualHead, type Rgb } from '../../model/config.js';
import { modelConfigFor } from '../../model/pretrained/model.js';
import { loadTextEmbeddings } from '../../model/text-embeddings.js';
import { modelLayout } from '../../model/vit.js';
import { DEFAULT_ADAMW, type TrainSection } from '../../model/train-config.js';
import type { StepSummary } from '../job/control-server.js';
import { datasetRowSource } from '../data/dataset-source.js';
import { runJob } from '../job/run-job.js';
import { serveMetrics, TrainingMetrics } from '../ops/metrics-server.js';
import { writeRunEnvironment } from '../report/environment.js';
import { Sampler } from '../job/sampler.js';
import { labelSetFor, type TrainConfig } from './config.js';
import { augmentPolicy } from '../../shared/augment/policy.js';
import { lrMultipliers, parseFreeze } from '../../model/param-groups.js';
import type { CheckpointFlags } from './checkpoint-flags.js';

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
  /** Checkpoint flags; `resume: 'auto'` resumes the newest committed checkpoint in the run directory, if any. */
  checkpoints?: Partial<CheckpointFlags>;
  log: Logger;
}

/** One line of metrics.jsonl. */
export interface MetricsRecord {
  step: number;
  epoch: number;
  loss: number;
  loss_classification: number;
  loss_contrastive: number;
  loss_label_prior: number;
  lr: number;
  grad_norm: number;
  images_per_s: number;
  time_compute_s: number;
  time_gather_s: number;
  time_reduce_s: number;
  time_data_wait_s: number;
  time_step_s: number;
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
}

/** The metrics.jsonl line of one step, from the ranks' reports (losses are global; times are the slowest rank's). */
export function metricsRecord(s: StepSummary, stepSeconds: number): MetricsRecord {
  const l = s.losses;
  return {
    step: s.step + 1,
    epoch: s.epoch,
    loss: l.loss ?? NaN,
    loss_classification: l.loss_classification ?? NaN,
    loss_contrastive: l.loss_contrastive ?? NaN,
    loss_label_prior: l.loss_label_prior ?? NaN,
    lr: l.lr ?? NaN,
    grad_norm: l.grad_norm ?? NaN,
    images_per_s: stepSeconds > 0 ? s.images / stepSeconds : 0,
    time_compute_s: s.timings.compute,
    time_gather_s: s.timings.gather,
    time_reduce_s: s.timings.reduce,
    time_data_wait_s: s.timings.dataWait,
    time_step_s: stepSeconds,
  };
}

/**
 * Data-parallel training: N worker processes (local or remote) each run the `train` step on
 * their slice of every global batch (worker/train-step.ts); this process owns the sampler and the
 * data feed, and writes the run directory: config.json, environment.json, metrics.jsonl; the
 * ranks write model.json/model.bin, eval.json, eval-epoch-E.json and embeddings.json (rank 0).
 */
export async function trainDistributed(cfg: TrainConfig, o: TrainJobOptions): Promise<TrainJobResult> {
  const ds = await openDataset(cfg.data);
  try {
    const { height, width } = ds.manifest.image;
    if (height !== width)
      throw new UserError(`${cfg.data}: images are ${height}x${width}; the model needs square images (prepare with --size)`);
    const labels = [...ds.labelNames];
    const L = labels.length;
    const source = datasetRowSource(ds);
    if (source.size < cfg.batchSize)
      throw new UserError(`--batch-size ${cfg.batchSize} is larger than the ${source.size} training images in ${cfg.data}`);
    if (cfg.batchSize < cfg.workers)
      throw new UserError(
        `--batch-size ${cfg.batchSize} (global) is smaller than --workers ${cfg.workers}: every worker needs at least one image per step`,
      );
    const sampler = new Sampler({ size: source.size, globalBatch: cfg.batchSize, seed: cfg.seed });
    const perEpoch = sampler.stepsPerEpoch;
    const totalSteps = cfg.steps ?? (cfg.epochs ?? 1) * perEpoch;
    if (cfg.eval !== 'none' && ds.split(cfg.eval).length === 0)
      throw new UserError(`the ${cfg.eval} split of ${cfg.data} is empty; use --eval with another split or none`);
    const text = cfg.textEmbeddings ? loadTextEmbeddings(cfg.textEmbeddings, labels) : null;
    const image =
      cfg.imageMean && cfg.imageStd ? { mean: cfg.imageMean as unknown as Rgb, std: cfg.imageStd as unknown as Rgb } : undefined;
    if (cfg.pretrained && o.checkpoints?.initWeights)
      throw new UserError('--pretrained and --init-weights exclude each other: the directory already names the weights');
    const model = withVisualHead(
      await modelConfigFor(cfg.pretrained ?? null, {
        preset: cfg.model,
        imageSize: height,
        labels,
        head: cfg.head,
        textEmbeddingsFile: cfg.textEmbeddings,
        ...(text ? { textDim: text.dim } : {}),
        ...(image ? { image } : {}),
      }),
      cfg.visualHead ?? 'none',
      cfg.visualHeadLayers ?? 1,
    );
    if (model.pretrained)
      o.log.info(`pretrained ${model.pretrained.tower} image tower from ${model.pretrained.weights} (sha256 ${model.pretrained.sha256})`);
    const set = labelSetFor(ds.manifest.labelSet, labels);
    let posWeight: Float32Array | null = null;
    if (cfg.posWeight === 'balanced') {
      const train = ds.split('train');
      const all = new Float32Array(train.length * L);
      for (let s = 0; s < train.length; s += 1024) {
        const idx = Array.from({ length: Math.min(1024, train.length - s) }, (_, i) => s + i);
        all.set((await train.read(idx)).labels, s * L);
      }
      posWeight = balancedPosWeights(all, L);
    }
    const textHead = cfg.head === 'text';
    const section: { -readonly [K in keyof TrainSection]: TrainSection[K] } = {
      backend: cfg.backend,
      model,
      fixedPrompts: text ? Array.from(text.vectors) : null,
      weights: { classification: cfg.wCls, contrastive: textHead ? cfg.wCon : 0, labelPrior: textHead ? cfg.wPrior : 0 },
      uncertainty: uncertaintyPolicies(labels, cfg.uncertainty, cfg.uncertaintyLabel),
      blank: cfg.blank,
      posWeight: posWeight ? Array.from(posWeight) : null,
      // The names' target; the state prompts' is the identity (model/prior-scope.ts).
      priorTarget: cfg.priorScope === 'states' ? [] : Array.from(labelPriorTarget(cfg.labelPrior, labels, set)),
      priorScope: cfg.priorScope ?? 'names',
      lrScales: Array.from(
        lrMultipliers(modelLayout(model), {
          lr: cfg.lr,
          headLr: cfg.headLr ?? null,
          layerDecay: cfg.lrLayerDecay ?? 1,
          freeze: parseFreeze(cfg.freeze ?? []),
        }),
      ),
      optimizer: {
        lr: cfg.lr,
        warmupSteps: cfg.warmupSteps,
        totalSteps,
        minLrRatio: cfg.minLrRatio,
        weightDecay: cfg.weightDecay,
        clipNorm: cfg.clipNorm,
      },
      out: cfg.out,
      data: cfg.data,
      eval: cfg.eval,
      competition: [...(set?.competition ?? [])],
      bootstrap: cfg.bootstrap,
      resume: null,
      initWeights: null,
    };

    const ck = o.checkpoints ?? {};
    const layout = modelLayout(model);
    // What a resumed run must share with the checkpoint: the model and the data order.
    const savedConfig = {
      model,
      fixedPrompts: section.fixedPrompts,
      labelSet: set?.name ?? null,
      labels,
      seed: cfg.seed,
      globalBatch: cfg.batchSize,
      trainRows: source.size,
    };
    const ckRoot = checkpointsDir(cfg.out);
    let resume: { dir: string; step: number } | null = null;
    if (ck.resume) {
      const from = ck.resume === 'auto' ? cfg.out : ck.resume;
      const any = ck.resume !== 'auto' || (await listCheckpoints(ckRoot)).some((c) => c.committed);
      if (any) {
        const r = await resolveCheckpoint(from, {
          layout,
          requireConfig: {
            'model.preset': model.preset,
            'model.head': model.head,
            'model.pretrained.sha256': model.pretrained?.sha256,
            labelSet: savedConfig.labelSet,
            seed: cfg.seed,
            globalBatch: cfg.batchSize,
            trainRows: source.size,
          },
          onWarning: (msg) => o.log.warn(msg),
        });
        resume = { dir: r.dir, step: r.manifest.step };
        o.log.info(
          `resuming from ${r.dir}: step ${r.manifest.step} of ${totalSteps}, saved by ${r.manifest.world} worker${r.manifest.world > 1 ? 's' : ''}`,
        );
      } else o.log.info(`--resume auto: no committed checkpoint in ${ckRoot}; starting fresh`);
    }
    const startStep = resume?.step ?? 0;
    if (startStep >= totalSteps)
      throw new UserError(
        `${resume!.dir} is at step ${startStep}: nothing left of ${totalSteps} steps (--steps and --epochs are totals; raise them to train on)`,
      );
    section.resume = resume?.dir ?? null;
    section.initWeights = ck.initWeights ? path.resolve(ck.initWeights) : null;

    // A finished or interrupted run is never overwritten by a fresh start (its metrics and model
    // would be mixed up), except with --resume auto and nothing committed: a restart of a run that
    // died before its first checkpoint starts it over.
    const resumingHere = resume !== null && path.resolve(resume.dir).startsWith(path.resolve(cfg.out) + path.sep);
    if (!resumingHere && ck.resume !== 'auto')
      for (const f of ['metrics.jsonl', 'model.json'])
        if (
          await fsp.stat(path.join(cfg.out, f)).then(
            () => true,
            () => false,
          )
        )
          throw new UserError(
            `--out ${cfg.out} already holds a run (${f}); choose a new run directory, remove it, or continue it with --resume ${cfg.out}`,
          );
    await fsp.mkdir(cfg.out, { recursive: true });
    // A crashed save leaves a step directory without a manifest; no save runs now.
    const removed = await removeUncommitted(ckRoot);
    if (removed.length)
      o.log.warn(
        `removed ${removed.length} uncommitted checkpoint director${removed.length > 1 ? 'ies' : 'y'} of an interrupted save: ${removed.join(', ')}`,
      );
    await writeJsonAtomic(path.join(cfg.out, 'config.json'), {
      ...cfg,
      resolved: {
        model,
        parameters: modelLayout(model).total,
        totalSteps,
        stepsPerEpoch: perEpoch,
        perWorkerBatch: cfg.batchSize / cfg.workers,
        labelSet: set?.name ?? null,
        adamw: { ...DEFAULT_ADAMW, weightDecay: cfg.weightDecay },
        posWeight: section.posWeight,
        uncertainty: section.uncertainty,
      },
    });
    await writeRunEnvironment(cfg.out, { workers: cfg.workers });
    // Stale results of an earlier run in the same directory would be read as this run's.
    if (startStep === 0)
      for (const f of await fsp.readdir(cfg.out))
        if (f === 'eval.json' || /^eval-epoch-\d+\.json$/.test(f)) await fsp.rm(path.join(cfg.out, f));
        else await fsp.rm(path.join(cfg.out, 'eval.json'), { force: true });

    const metrics = new TrainingMetrics();
    metrics.setWorkersExpected(cfg.workers);
    const server =
      o.metricsPort !== undefined ? await serveMetrics(metrics, { port: o.metricsPort, ...(o.listen ? { host: '0.0.0.0' } : {}) }) : null;
    if (server) o.log.info(`metrics on ${server.url}`);
    const bar = o.progress === false ? null : createProgress({ label: 'train', total: totalSteps, unit: 'steps', logger: o.log });
    // A resumed run continues metrics.jsonl from the checkpoint: lines of steps after it (run
    // before a crash, lost with it) are dropped so that every step appears once.
    const metricsPath = path.join(cfg.out, 'metrics.jsonl');
    let kept = '';
    if (startStep > 0) {
      const old = await fsp.readFile(metricsPath, 'utf8').catch(() => '');
      kept = old
        .split('\n')
        .filter((l) => l.trim() && (JSON.parse(l) as { step: number }).step <= startStep)
        .map((l) => l + '\n')
        .join('');
    }
    await fsp.writeFile(metricsPath, kept);
    const file = await fsp.open(metricsPath, 'a');
    // Checkpoints: the coordinator decides after which steps the ranks save (the feed tells them),
    // collects their shard reports and commits each checkpoint once all are in.
    const endStep = totalSteps;
    const schedule = { everySteps: ck.checkpointEvery ?? 0, everyMinutes: ck.checkpointEveryMinutes ?? 0 };
    let last = { step: startStep, lastAtMs: Date.now() };
    const checkpointAfter = (step: number): boolean => {
      const S = step + 1;
      const due = S === endStep || checkpointDue(schedule, { step: S, lastStep: last.step, lastAtMs: last.lastAtMs }, Date.now());
      if (due) last = { step: S, lastAtMs: Date.now() };
      return due;
    };
    const shards = new Map<number, ShardWritten[]>();
    let committing: Promise<unknown> = Promise.resolve();
    let lastCommitted = '';
    const onCheckpointShard = (w: ShardWritten) => {
      const got = [...(shards.get(w.step) ?? []), w];
      shards.set(w.step, got);
      if (got.length < cfg.workers) return;
      shards.delete(w.step);
      const t0 = performance.now();
      const dir = stepDir(ckRoot, w.step);
      const pos = sampler.positionAt(w.step);
      committing = committing.then(async () => {
        await commitCheckpoint(dir, {
          step: w.step,
          epoch: pos.epoch,
          sampler: { ...pos, seed: cfg.seed, globalBatch: cfg.batchSize, size: source.size },
          rng: { seed: cfg.seed, note: 'the sampler and label smoothing are pure functions of (seed, epoch, index): no state to save' },
          config: savedConfig,
          layout,
          world: cfg.workers,
          shards: got,
        });
        await pruneCheckpoints(ckRoot, ck.keepCheckpoints ?? 3);
        metrics.observeCheckpoint('save', Math.max(...got.map((g) => g.seconds ?? 0)) + (performance.now() - t0) / 1000, w.step);
        lastCommitted = dir;
        o.log.info(`checkpoint ${dir} committed`);
      });
    };
    let writing: Promise<unknown> = Promise.resolve();
    let lastAt = performance.now();
    // The bar shows the run's mean rate: a step that also ran an epoch's evaluation would show a tenth of it.
    const barStart = performance.now();
    let barImages = 0;
    try {
      const result = await runJob({
        workers: cfg.workers,
        listen: o.listen,
        advertise: o.advertise,
        dataPort: o.dataPort,
        token: o.token,
        gpu: o.gpu,
        workerEnv: COLLECTIVES_ENV,
        workerOutput: o.workerOutput,
        step: { name: 'train' },
        config: { train: section },
        source,
        seed: cfg.seed,
        globalBatch: cfg.batchSize,
        startStep,
        steps: totalSteps - startStep,
        prefetch: o.prefetch,
        augment: augmentPolicy(cfg.augment ?? 'none', cfg.augmentHflip ?? 0),
        checkpointAfter,
        onCheckpointShard,
        paramsCheckEvery: o.paramsCheckEvery ?? 50,
        onRendezvous: (w) => metrics.setWorkersUp(w.length),
        onStep: (s) => {
          const now = performance.now();
          // Step time as the coordinator sees it (reports arrive in step order): includes every
          // rank's wait for the slowest, which the per-rank totals do not.
          const rec = metricsRecord(s, Math.max(s.timings.total, (now - lastAt) / 1000));
          lastAt = now;
          writing = writing.then(() => file.write(JSON.stringify(rec) + '\n'));
          metrics.observeStep(rec as unknown as Parameters<TrainingMetrics['observeStep']>[0]);
          // The ZeRO-1 reduce-scatter + parameter all-gather move an all-reduce's bytes.
          if (cfg.workers > 1 && rec.time_reduce_s > 0)
            metrics.observeCollective('allreduce', layout.total * 4, rec.time_reduce_s, cfg.workers);
          barImages += s.images;
          bar?.update(rec.step, {
            epoch: rec.epoch,
            loss: rec.loss.toFixed(4),
            'img/s': (barImages / ((now - barStart) / 1000)).toFixed(1),
          });
        },
        log: o.log,
      });
      await writing;
      await committing;
      if (lastCommitted !== stepDir(ckRoot, endStep)) throw new Error(`the final checkpoint (step ${endStep}) was not committed`);
      bar?.stop();
      let evalReport: TrainJobResult['evalReport'] = null;
      if (cfg.eval !== 'none') {
        evalReport = JSON.parse(await fsp.readFile(path.join(cfg.out, 'eval.json'), 'utf8'));
        metrics.observeEval(evalReport as unknown as Parameters<TrainingMetrics['observeEval']>[0]);
      }
      metrics.setPhase('done');
      return {
        steps: result.stepsRun,
        startStep,
        checkpoint: lastCommitted,
        seconds: result.seconds,
        paramsHash: result.lastStep?.paramsHash ?? '',
        evalReport,
      };
    } catch (e) {
      await committing.catch(() => {});
      metrics.setPhase('failed');
      bar?.stop();
      throw e;
    } finally {
      await writing.catch(() => {});
      await file.close();
      await server?.close();
    }
  } finally {
    await ds.close();
  }
}
