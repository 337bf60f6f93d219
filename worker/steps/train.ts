import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { openDataset, type Dataset } from '../../shared/dataset/reader.js';
import type { SplitName } from '../../shared/dataset/manifest.js';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import { aurocReport } from '../../shared/metrics/auroc.js';
import { loadPretrainedParams } from '../../model/pretrained/model.js';
import { CheckpointWriter, checkpointsDir, layoutHash, loadCheckpoint, loadInitWeights, stepDir } from '../../shared/checkpoint/index.js';
import { paramsSha256 } from '../../shared/params-hash.js';
import { shardRange, shardRanges } from '../../shared/shard.js';
import { writeRunEmbeddings } from '../../shared/run/embeddings.js';
import { initBackend } from '../../kernels/backend.js';
import { ThreadedProcessGroup, spansBuffer } from '../collectives/threaded-group.js';
import { cosineLogits } from '../../model/losses.js';
import { DEFAULT_ADAMW, type TrainSection } from '../../model/train-config.js';
import { evalEpochFile } from '../../shared/run/files.js';
import { saveParams } from '../../model/params-file.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import { adamwStep, adamwStepGroups, clipFactor, decayMask, learningRate, lrGroups, sumOfSquares, type Schedule } from './adamw.js';
import { computeGradients, type StepComm, type StepOptions } from './forward-backward.js';
import type { StepContext, StepInfo, StepResult, WorkerStep } from './api.js';
import type { SampleBatch } from '../../shared/dataset/reader.js';

/**
 * The data-parallel training step (issue 5, ZeRO-1 shape of DESIGN.md). Every rank builds the same
 * model from the seed (the rendezvous hash check proves it). Per step: forward/backward on this
 * rank's slice with the embeddings all-gathered for the contrastive loss, reduce-scatter of the
 * flat gradient, the global gradient norm from an all-reduce of per-shard sums of squares, AdamW on
 * this rank's shardRange of the flat vector (it holds m and v for that range only), all-gather of
 * the updated ranges, assignment to the model. All collectives run in a fixed order, so every rank
 * ends each step with bit-identical parameters.
 */
export async function createTrainStep(ctx: StepContext): Promise<WorkerStep> {
  const t = ctx.config.train as TrainSection;
  const backend = await initBackend(t.backend);
  ctx.log.info(`backend: ${backend.name} (${backend.reason})`);
  const { rank, world } = ctx;
  const endpoints = ctx.peers.map((p, r) => (r === rank ? ctx.collectiveBind : p));
  // Rank 0 alone computes AUROC (bootstrap) and writes files after an evaluation while the others
  // already wait in the next step's first collective: the timeout must cover that, not just a
  // step. A peer that dies is still noticed at once (its connection drops).
  // The group lives in a comm thread: the step's embedding all-gather blocks inside the tape.
  // The control session interrupts the in-tape gather when the coordinator aborts the job.
  const pg = world > 1 ? await ThreadedProcessGroup.create({ rank, world, endpoints, timeoutMs: 300_000 }, ctx.control) : null;
  const path = pg?.dataPath;
  if (path)
    ctx.log.info(
      `collectives: sends ${path.send === 'shared-memory' ? 'through shared memory' : 'on the socket'}, receives ${path.receive === 'shared-memory' ? 'through shared memory' : 'on the socket'}, ring chunk ${path.chunkBytes >> 10} KiB, all-reduce ${path.allReduce === 'shared-buffers' ? 'through shared buffers' : 'on the ring'}${path.note ? ` (${path.note})` : ''}`,
    );
  try {
    return await trainStepWith(ctx, t, pg);
  } catch (e) {
    await pg?.close();
    throw e;
  }
}

/** The step itself, once its comm thread (if any) is up; the caller closes the thread if this throws. */
async function trainStepWith(ctx: StepContext, t: TrainSection, pg: ThreadedProcessGroup | null): Promise<WorkerStep> {
  const job = ctx.config.job;
  const { rank, world } = ctx;

  let params: Float32Array = initialParams(t.model, job.seed);
  const fixed = t.fixedPrompts ? Float32Array.from(t.fixedPrompts) : undefined;
  const model = new CxrModel(t.model, params, fixed);
  const total = model.layout.total;
  const own = shardRange(total, world, rank);
  const paramCounts = shardRanges(total, world).map((s) => s.end - s.start);
  const mask = decayMask(model.layout);
  // Fine-tuning controls: per-parameter rates, frozen parameters out of the backward pass and never written.
  const scales = t.lrScales?.some((s) => s !== 1) ? t.lrScales : null;
  const groups = scales ? lrGroups(model.layout, scales) : null;
  const trainable = scales ? model.variables.filter((_, k) => scales[k] !== 0) : undefined;
  let m: Float32Array = new Float32Array(own.end - own.start);
  let v: Float32Array = new Float32Array(own.end - own.start);
  if (t.resume) {
    // Any world size: this rank reads the whole vector and m, v of its new range from the overlapping old shards.
    const ck = await loadCheckpoint(t.resume, { layout: model.layout, world, rank });
    if (ck.step !== job.startStep)
      throw new Error(`the coordinator resumes at step ${job.startStep} but ${t.resume} holds step ${ck.step}`);
    params = ck.params;
    m = ck.m;
    v = ck.v;
    model.assignFlat(params);
    ctx.log.info(`resumed from ${ck.dir} (step ${ck.step}, saved by ${ck.manifest.world} worker${ck.manifest.world > 1 ? 's' : ''})`);
  } else if (t.initWeights) {
    const w = await loadInitWeights(t.initWeights, model.layout, params);
    params = w.params;
    model.assignFlat(params);
    if (rank === 0)
      ctx.log.info(
        `initial weights from ${t.initWeights}: ${w.loaded.length} tensors loaded, ${w.missing.length} kept fresh (${w.missing.slice(0, 5).join(', ')}${w.missing.length > 5 ? ', ...' : ''})`,
      );
  } else if (t.model.pretrained) {
    const w = await loadPretrainedParams(t.model, params);
    params = w.params;
    model.assignFlat(params);
    if (rank === 0)
      ctx.log.info(
        `pretrained weights from ${t.model.pretrained.weights}: ${w.loaded.length} tensors loaded, ${w.missing.length} kept fresh, ${w.unused.length} of the file not used`,
      );
  }
  // The parameter all-gather moves `params` to the comm thread and back (no copy): it must own its
  // memory. The model's variables never alias it (assignFlat writes into their own storage).
  if (!spansBuffer(params)) params = params.slice();
  // The flat gradient: filled by the step, moved to the comm thread and back by the
  // reduce-scatter, and filled again by the next step.
  let gradBuf: Float32Array = new Float32Array(total);
  const writer = new CheckpointWriter();
  const lHash = layoutHash(model.layout);
  let saving: Promise<void> = Promise.resolve();
  const hyper = { ...DEFAULT_ADAMW, weightDecay: t.optimizer.weightDecay, lr: 0 };
  const schedule: Schedule = {
    baseLr: t.optimizer.lr,
    warmupSteps: Math.min(t.optimizer.warmupSteps, t.optimizer.totalSteps),
    totalSteps: t.optimizer.totalSteps,
    minLrRatio: t.optimizer.minLrRatio,
  };
  const rowCounts = shardRanges(job.globalBatch, world).map((s) => s.end - s.start);
  const stepOpts: StepOptions = {
    weights: t.weights,
    targets: { uncertainty: t.uncertainty, blank: t.blank, seed: job.seed },
    posWeight: t.posWeight ? Float32Array.from(t.posWeight) : null,
    priorTarget: Float32Array.from(t.priorTarget),
    priorScope: t.priorScope ?? 'names',
    ...(trainable ? { trainable } : {}),
  };

  const timing = { gather: 0 };
  const countsOf = (local: Float32Array): number[] => {
    const width = local.length / rowCounts[rank]!;
    if (!Number.isInteger(width)) throw new Error(`train step: gathering ${local.length} values from ${rowCounts[rank]} rows`);
    return rowCounts.map((c) => c * width);
  };
  const comm: StepComm = {
    rank,
    world,
    rowCounts,
    async allGather(local) {
      if (!pg) return local;
      const t0 = performance.now();
      const out = await pg.allGatherV(local, countsOf(local));
      timing.gather += (performance.now() - t0) / 1000;
      return out;
    },
    allGatherSync(local) {
      if (!pg) return local;
      const t0 = performance.now();
      const out = pg.allGatherVSync(local, countsOf(local));
      timing.gather += (performance.now() - t0) / 1000;
      return out;
    },
    async allReduceSum(buf) {
      if (pg) await pg.allReduce(buf);
    },
  };

  let dataset: Dataset | null = null;
  const evalSplit = async (split: SplitName, withEmbeddings: boolean) => {
    dataset ??= await openDataset(t.data);
    const reader = dataset.split(split);
    const L = t.model.labels.length;
    const D = t.model.embedDim;
    const rows = shardRanges(reader.length, world);
    const mine = rows[rank]!;
    const n = mine.end - mine.start;
    const scores = new Float32Array(n * L);
    const labels = new Float32Array(n * L);
    const emb = new Float32Array(withEmbeddings ? n * D : 0);
    for (let s = 0; s < n; s += 128) {
      const k = Math.min(128, n - s);
      const b = await reader.read(Array.from({ length: k }, (_, i) => mine.start + s + i));
      const [logits, z] = tf.tidy(() => {
        const zz = model.encodeImages(model.pixelsToInput(b.images, k));
        const lg =
          t.model.head === 'text'
            ? cosineLogits(zz, model.encodeText().names, model.p('cls.log_scale'), model.p('cls.bias'))
            : (tf.add(tf.matMul(zz, model.p<tf.Tensor2D>('cls.weight')), model.p('cls.bias')) as tf.Tensor2D);
        return [lg, tf.div(zz, tf.norm(zz, 'euclidean', 1, true))];
      });
      scores.set((await logits.data()) as Float32Array, s * L);
      if (withEmbeddings) emb.set((await z.data()) as Float32Array, s * D);
      logits.dispose();
      z.dispose();
      labels.set(b.labels, s * L);
    }
    const gather = async (x: Float32Array, width: number) =>
      pg
        ? pg.allGatherV(
            x,
            rows.map((r) => (r.end - r.start) * width),
          )
        : x;
    const allScores = await gather(scores, L);
    const allLabels = await gather(labels, L);
    const allEmb = withEmbeddings ? await gather(emb, D) : null;
    return { n: reader.length, scores: allScores, labels: allLabels, embeddings: allEmb };
  };

  /** Scores the eval split on every rank's share; rank 0 computes AUROC and writes `file`. */
  const evaluate = async (file: string, final: boolean, step: number, epoch: number) => {
    if (t.eval === 'none') return;
    const r = await evalSplit(t.eval, final && t.eval === 'test');
    if (rank !== 0) return;
    const rep = aurocReport(
      { scores: r.scores, labels: r.labels, n: r.n, labelNames: t.model.labels },
      t.competition,
      t.bootstrap > 0 ? { replicates: t.bootstrap, seed: job.seed } : undefined,
    );
    await writeJsonAtomic(path.join(t.out, file), final ? { split: t.eval, ...rep } : { split: t.eval, step, epoch, ...rep });
    if (r.embeddings && t.model.head === 'text') {
      const names = tf.tidy(() => {
        const e = model.encodeText().names;
        return tf.div(e, tf.norm(e, 'euclidean', 1, true));
      });
      const labelEmbeddings = Float32Array.from(await names.data());
      names.dispose();
      await writeRunEmbeddings(t.out, { labels: t.model.labels, labelEmbeddings, testEmbeddings: r.embeddings, testLabels: r.labels });
    }
  };

  return {
    async run(b: SampleBatch, info: StepInfo): Promise<StepResult> {
      const t0 = performance.now();
      timing.gather = 0;
      const r = await computeGradients(
        model,
        { n: b.n, images: b.images, labels: b.labels, indices: info.indices, epoch: info.epoch },
        comm,
        stepOpts,
        false,
        gradBuf,
      );
      const tReduce = performance.now();
      // The gradient moves to the comm thread and comes back with this rank's range summed.
      const grads = pg ? await pg.reduceScatter(r.grads) : r.grads;
      gradBuf = grads;
      // The global norm and the loss terms in one small all-reduce. The float64 sum of squares
      // travels as a float32 pair (hi, lo) so that the norm keeps its precision.
      const ss = sumOfSquares(grads, own);
      const hi = Math.fround(ss);
      const small = Float32Array.of(hi, ss - hi, r.terms.classification, r.terms.contrastive, r.terms.labelPrior, r.terms.total);
      if (pg) await pg.allReduce(small);
      const reduceSeconds1 = (performance.now() - tReduce) / 1000;
      const norm = Math.sqrt(small[0]! + small[1]!);
      if (!Number.isFinite(norm)) throw new Error(`step ${info.step + 1}: the gradient is not finite (loss ${small[5]}); lower --lr`);
      const tOpt = performance.now();
      hyper.lr = learningRate(schedule, info.step + 1);
      // Clipping's scale is applied as AdamW reads each gradient (with the bits of scaling first).
      if (groups) adamwStepGroups(params, grads, m, v, own, hyper, info.step + 1, mask, groups, clipFactor(norm, t.optimizer.clipNorm));
      else adamwStep(params, grads, m, v, own, hyper, info.step + 1, mask, clipFactor(norm, t.optimizer.clipNorm));
      const optSeconds = (performance.now() - tOpt) / 1000;
      const tGather = performance.now();
      // The parameters move to the comm thread and come back with the other ranks' ranges filled in.
      if (pg) params = await pg.allGatherVInPlace(params, paramCounts);
      const reduceSeconds = reduceSeconds1 + (performance.now() - tGather) / 1000;
      model.assignFlat(params);
      const computeSeconds = (tReduce - t0) / 1000 - timing.gather + optSeconds;
      const losses = {
        loss: small[5]!,
        loss_classification: small[2]!,
        loss_contrastive: small[3]!,
        loss_label_prior: small[4]!,
        lr: hyper.lr,
        grad_norm: norm,
      };
      const last = info.step + 1 === job.endStep;
      const epochEnd = info.epochStep === job.stepsPerEpoch - 1;
      if (info.checkpoint) {
        // Training waits only for the previous save and the copy-out; the write runs in the
        // background and reports itself to the coordinator, which commits once every rank has.
        await saving;
        await writer.idle();
        const S = info.step + 1;
        const save = writer
          .save(stepDir(checkpointsDir(t.out), S), {
            rank,
            world,
            step: S,
            layoutHash: lHash,
            start: own.start,
            end: own.end,
            params: params.subarray(own.start, own.end),
            m,
            v,
          })
          .then((w) => ctx.control.commitCheckpoint(w));
        saving = save;
        save.catch(() => {}); // rethrown at the next checkpoint or the end
        // The run's last checkpoint is reported before the last step, so the coordinator commits it before the job ends.
        if (last) await save;
      }
      if (last && rank === 0) await saveParams(t.out, t.model, params, info.step + 1, fixed);
      if (epochEnd && !last) await evaluate(evalEpochFile(info.epoch), false, info.step + 1, info.epoch);
      if (last) await evaluate('eval.json', true, info.step + 1, info.epoch);
      return { images: b.n, losses, timings: { compute: computeSeconds, gather: timing.gather, reduce: reduceSeconds } };
    },
    paramsHash: () => paramsSha256(params),
    async close() {
      await writer.close().catch(() => {});
      model.dispose();
      await (dataset as Dataset | null)?.close();
      await pg?.close();
    },
  };
}
