import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../shared/errors.js';
import { writeJsonAtomic } from '../shared/fs-atomic.js';
import { BUILTIN_LABEL_SETS, loadLabelSet, type LabelSet } from '../shared/labels.js';
import { aurocReport, type AurocReport } from '../shared/metrics/auroc.js';
import { initBackend, type BackendChoice, type BackendInfo } from '../worker/backend.js';
import {
  balancedPosWeights,
  labelPriorTarget,
  uncertaintyPolicies,
  type BlankPolicy,
  type LabelPriorKind,
} from '../worker/losses.js';
import { resolveModelConfig, type ModelConfig } from '../worker/model/config.js';
import { existsSync } from 'node:fs';
import { checkpointsDir, loadCheckpoint } from '../shared/checkpoint/index.js';
import { loadParams, PARAMS_JSON, saveParams } from '../worker/model/params-file.js';
import { loadTextEmbeddings } from '../worker/model/text-embeddings.js';
import { CxrModel, initialParams } from '../worker/model/vit.js';
import { DEFAULT_ADAMW, adamwStep, clipFactor, decayMask, learningRate, scaleInPlace, sumOfSquares } from '../worker/optim.js';
import { computeGradients, localComm, predictLogits, type StepComm, type StepOptions } from '../worker/step.js';
import { globalBatchIndices } from './local-sampler.js';

export type SplitName = 'train' | 'val' | 'test';

/** What training needs of a dataset (the shape of shared/dataset/reader's Dataset). */
export interface TrainData {
  readonly labelNames: readonly string[];
  /** Label-set name from the manifest, for the label graph. */
  readonly labelSet: string;
  readonly imageSize: number;
  split(name: SplitName): {
    readonly length: number;
    read(indices: ArrayLike<number>): Promise<{ n: number; images: Uint8Array; labels: Float32Array }>;
  };
}

export interface TrainConfig {
  data: string;
  out: string;
  workers: number;
  model: string;
  epochs: number | null;
  steps: number | null;
  batchSize: number;
  seed: number;
  eval: 'test' | 'val' | 'none';
  backend: BackendChoice;
  lr: number;
  warmupSteps: number;
  minLrRatio: number;
  weightDecay: number;
  clipNorm: number;
  head: 'text' | 'linear';
  textEmbeddings: string | null;
  wCls: number;
  wCon: number;
  wPrior: number;
  labelPrior: LabelPriorKind;
  uncertainty: string;
  uncertaintyLabel: string[];
  blank: BlankPolicy;
  posWeight: 'none' | 'balanced';
  bootstrap: number;
}

export interface StepRecord {
  step: number;
  epoch: number;
  loss: number;
  loss_classification: number;
  loss_contrastive: number;
  loss_label_prior: number;
  lr: number;
  grad_norm: number;
  images_per_s: number;
}

/** The label set a dataset's labels belong to (by manifest name, else by identical label list). */
export function labelSetFor(name: string, labels: readonly string[]): LabelSet | null {
  const candidates = [name, ...BUILTIN_LABEL_SETS];
  for (const c of candidates) {
    try {
      const set = loadLabelSet(c);
      if (set.labels.length === labels.length && set.labels.every((l, i) => l === labels[i])) return set;
    } catch {
      /* not a loadable set */
    }
  }
  return null;
}

/** Read training labels in chunks (for positive weights) without holding the pixels. */
async function allLabels(split: ReturnType<TrainData['split']>, L: number): Promise<Float32Array> {
  const out = new Float32Array(split.length * L);
  for (let s = 0; s < split.length; s += 1024) {
    const idx = Array.from({ length: Math.min(1024, split.length - s) }, (_, i) => s + i);
    out.set((await split.read(idx)).labels, s * L);
  }
  return out;
}

export interface Progress {
  update(step: number, total: number, rec: StepRecord): void;
  done(): void;
}

/**
 * Train in this process (world 1 through the same step code the workers run) and write the run
 * directory: config.json, metrics.jsonl, model.json + model.bin, eval.json.
 */
export async function trainLocal(cfg: TrainConfig, data: TrainData, progress: Progress, log: (line: string) => void, comm: StepComm = localComm): Promise<{ backend: BackendInfo; steps: number; evalReport: (AurocReport & { split: string }) | null }> {
  const backend = await initBackend(cfg.backend);
  log(`backend: ${backend.name} (${backend.reason})`);
  const labels = [...data.labelNames];
  const L = labels.length;
  const train = data.split('train');
  if (train.length < cfg.batchSize) throw new UserError(`--batch-size ${cfg.batchSize} is larger than the ${train.length} training images in ${cfg.data}`);
  const perEpoch = Math.floor(train.length / cfg.batchSize);
  const totalSteps = cfg.steps ?? (cfg.epochs ?? 1) * perEpoch;
  if (!(totalSteps > 0)) throw new UserError('nothing to train: give --epochs or --steps greater than 0');
  const text = cfg.textEmbeddings ? loadTextEmbeddings(cfg.textEmbeddings, labels) : null;
  const modelCfg: ModelConfig = resolveModelConfig({
    preset: cfg.model,
    imageSize: data.imageSize,
    labels,
    head: cfg.head,
    textEmbeddingsFile: cfg.textEmbeddings,
    ...(text ? { textDim: text.dim } : {}),
  });
  const set = labelSetFor(data.labelSet, labels);
  const stepOpts: StepOptions = {
    weights: { classification: cfg.wCls, contrastive: cfg.head === 'text' ? cfg.wCon : 0, labelPrior: cfg.head === 'text' ? cfg.wPrior : 0 },
    targets: { uncertainty: uncertaintyPolicies(labels, cfg.uncertainty, cfg.uncertaintyLabel), blank: cfg.blank, seed: cfg.seed },
    posWeight: cfg.posWeight === 'balanced' ? balancedPosWeights(await allLabels(train, L), L) : null,
    priorTarget: labelPriorTarget(cfg.labelPrior, labels, set),
  };
  await fsp.mkdir(cfg.out, { recursive: true });
  // A finished or interrupted run is never overwritten: its metrics and model would be mixed up.
  for (const f of ['metrics.jsonl', 'model.json'])
    if (await fsp.stat(path.join(cfg.out, f)).then(() => true, () => false))
      throw new UserError(`--out ${cfg.out} already holds a run (${f}); choose a new run directory or remove it`);
  await writeJsonAtomic(path.join(cfg.out, 'config.json'), {
    ...cfg,
    resolved: { backend, model: modelCfg, totalSteps, stepsPerEpoch: perEpoch, labelSet: set?.name ?? null, adamw: { ...DEFAULT_ADAMW, weightDecay: cfg.weightDecay }, posWeight: stepOpts.posWeight ? Array.from(stepOpts.posWeight) : null, uncertainty: stepOpts.targets.uncertainty },
  });

  const params = initialParams(modelCfg, cfg.seed);
  const model = new CxrModel(modelCfg, params, text?.vectors);
  const mask = decayMask(model.layout);
  const m = new Float32Array(model.layout.total);
  const v = new Float32Array(model.layout.total);
  const hyper = { ...DEFAULT_ADAMW, weightDecay: cfg.weightDecay, lr: 0 };
  const schedule = { baseLr: cfg.lr, warmupSteps: Math.min(cfg.warmupSteps, totalSteps), totalSteps, minLrRatio: cfg.minLrRatio };
  const metricsPath = path.join(cfg.out, 'metrics.jsonl');
  const metrics = await fsp.open(metricsPath, 'w');
  try {
    for (let s = 0; s < totalSteps; s++) {
      const t0 = performance.now();
      const { epoch, indices } = globalBatchIndices(train.length, cfg.batchSize, cfg.seed, s);
      const batch = await train.read(indices);
      const r = await computeGradients(model, { n: batch.n, images: batch.images, labels: batch.labels, indices, epoch }, comm, stepOpts);
      const norm = Math.sqrt(sumOfSquares(r.grads));
      if (!Number.isFinite(norm)) throw new Error(`step ${s + 1}: the gradient is not finite (loss ${r.terms.total}); lower --lr`);
      scaleInPlace(r.grads, clipFactor(norm, cfg.clipNorm));
      hyper.lr = learningRate(schedule, s + 1);
      adamwStep(params, r.grads, m, v, { start: 0, end: params.length }, hyper, s + 1, mask);
      model.assignFlat(params);
      const rec: StepRecord = {
        step: s + 1,
        epoch,
        loss: r.terms.total,
        loss_classification: r.terms.classification,
        loss_contrastive: r.terms.contrastive,
        loss_label_prior: r.terms.labelPrior,
        lr: hyper.lr,
        grad_norm: norm,
        images_per_s: batch.n / ((performance.now() - t0) / 1000),
      };
      await metrics.write(JSON.stringify(rec) + '\n');
      progress.update(s + 1, totalSteps, rec);
    }
  } finally {
    await metrics.close();
    progress.done();
  }
  await saveParams(cfg.out, modelCfg, params, totalSteps, text?.vectors);
  let evalReport: (AurocReport & { split: string }) | null = null;
  if (cfg.eval !== 'none') {
    evalReport = await evaluate(model, data, cfg.eval, set, { replicates: cfg.bootstrap, seed: cfg.seed });
    await writeJsonAtomic(path.join(cfg.out, 'eval.json'), evalReport);
  }
  model.dispose();
  return { backend, steps: totalSteps, evalReport };
}

/** Per-label AUROC of a model on a split, reading it in chunks. */
export async function evaluate(
  model: CxrModel,
  data: TrainData,
  splitName: SplitName,
  set: LabelSet | null,
  bootstrap: { replicates: number; seed: number },
): Promise<AurocReport & { split: string }> {
  const split = data.split(splitName);
  if (split.length === 0) throw new UserError(`the ${splitName} split of the dataset is empty; use --eval with another split or none`);
  const L = model.config.labels.length;
  const scores = new Float32Array(split.length * L);
  const labels = new Float32Array(split.length * L);
  for (let s = 0; s < split.length; s += 256) {
    const idx = Array.from({ length: Math.min(256, split.length - s) }, (_, i) => s + i);
    const b = await split.read(idx);
    scores.set(predictLogits(model, b.images, b.n), s * L);
    labels.set(b.labels, s * L);
  }
  const competition = set?.competition ?? [];
  const rep = aurocReport({ scores, labels, n: split.length, labelNames: model.config.labels }, competition, bootstrap.replicates > 0 ? bootstrap : undefined);
  return { split: splitName, ...rep };
}

/**
 * A trained model from a run directory's model.json/model.bin, or from a sharded checkpoint (a
 * step directory, or a run directory without model.json: its newest committed checkpoint).
 */
export async function loadSavedModel(where: string): Promise<{ doc: { config: ModelConfig; fixedPrompts?: number[] | null }; params: Float32Array }> {
  const isStep = existsSync(path.join(where, 'manifest.json'));
  const isRunWithoutModel = !existsSync(path.join(where, PARAMS_JSON)) && existsSync(checkpointsDir(where)) && !where.endsWith('.json');
  if (!isStep && !isRunWithoutModel) return loadParams(where);
  const ck = await loadCheckpoint(where, { layout: 'checkpoint', world: 1, rank: 0, moments: false });
  const c = ck.manifest.config as { model?: ModelConfig; fixedPrompts?: number[] | null } | null;
  if (!c?.model) throw new UserError(`${ck.dir}: the checkpoint's config has no model section (not written by the trainer); use coordinator export for its weights`);
  return { doc: { config: c.model, fixedPrompts: c.fixedPrompts ?? null }, params: ck.params };
}

/** `coordinator eval`: load a saved model and evaluate it on a split. */
export async function evalSaved(checkpoint: string, data: TrainData, splitName: SplitName, backendChoice: BackendChoice, bootstrap: { replicates: number; seed: number }, log: (line: string) => void) {
  const backend = await initBackend(backendChoice);
  log(`backend: ${backend.name} (${backend.reason})`);
  const { doc, params } = await loadSavedModel(checkpoint);
  const labels = [...data.labelNames];
  if (doc.config.labels.length !== labels.length || doc.config.labels.some((l, i) => l !== labels[i]))
    throw new UserError(`${checkpoint}: the model was trained on labels [${doc.config.labels.join(', ')}], the dataset has [${labels.join(', ')}]`);
  if (doc.config.imageSize !== data.imageSize)
    throw new UserError(`${checkpoint}: the model takes ${doc.config.imageSize}px images, the dataset has ${data.imageSize}px`);
  const model = new CxrModel(doc.config, params, doc.fixedPrompts ? Float32Array.from(doc.fixedPrompts) : undefined);
  try {
    return await evaluate(model, data, splitName, labelSetFor(data.labelSet, labels), bootstrap);
  } finally {
    model.dispose();
  }
}
