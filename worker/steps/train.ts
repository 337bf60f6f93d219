import type { SampleBatch } from '../../shared/dataset/reader.js';
import { paramsSha256 } from '../../shared/params-hash.js';
import { EVAL_FILE, evalEpochFile } from '../../shared/run/files.js';
import { shardRanges } from '../../shared/shard.js';
import { initBackend } from '../../kernels/backend.js';
import { saveParams } from '../../model/params-file.js';
import { lossWeights, type TrainStepConfig } from '../../model/train-config.js';
import { ThreadedProcessGroup } from '../collectives/threaded-group.js';
import type { StepContext, StepInfo, StepResult, WorkerStep } from './api.js';
import { ShardSaver } from './checkpoint-save.js';
import { Evaluator } from './eval.js';
import { computeGradients, type StepOptions } from './forward-backward.js';
import { ShardedAdamW } from './sharded-adamw.js';
import { frozenEntries, groupOptions, lrMultipliers } from '../../model/param-groups.js';
import { modelLayout } from '../../model/vit.js';
import { packing } from '../../shared/trainable.js';
import { groupComm } from './step-comm.js';
import { buildTrainState } from './train-state.js';

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
  const t = ctx.config.train as TrainStepConfig;
  const backend = await initBackend(t.run.backend);
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
async function trainStepWith(ctx: StepContext, t: TrainStepConfig, pg: ThreadedProcessGroup | null): Promise<WorkerStep> {
  const job = ctx.config.job;
  const { rank, world } = ctx;
  const run = t.run;
  // Fine-tuning controls: rates per parameter. Frozen ones are left out of the backward pass, and
  // the gradient, its reduction and AdamW's moments cover the others only (packed).
  const layout = modelLayout(run.resolved.model);
  const scales = lrMultipliers(layout, groupOptions(run));
  const tuned = scales.some((s) => s !== 1);
  const frozen = frozenEntries(layout, scales);
  const packed = frozen.length ? packing(layout, frozen) : null;
  const { model, state, fixedPrompts } = await buildTrainState(t, {
    rank,
    world,
    seed: job.seed,
    startStep: job.startStep,
    log: ctx.log,
    packing: packed,
  });
  const optimizer = new ShardedAdamW(pg, state, model.layout, { rank, world, run, lrScales: tuned ? scales : null, packing: packed });
  const comm = groupComm(
    pg,
    rank,
    world,
    shardRanges(job.globalBatch, world).map((s) => s.end - s.start),
  );
  const lossOptions: StepOptions = {
    weights: lossWeights(run),
    targets: { uncertainty: run.resolved.uncertainty, blank: run.blank, seed: job.seed },
    posWeight: run.resolved.posWeight ? Float32Array.from(run.resolved.posWeight) : null,
    priorTarget: Float32Array.from(run.resolved.priorTarget),
    priorScope: run.priorScope ?? 'names',
    ...(tuned ? { trainable: model.variables.filter((_, k) => scales[k] !== 0) } : {}),
  };
  const saver = new ShardSaver({ out: run.out, rank, world, packed: packed !== null, control: ctx.control }, model.layout);
  const evaluator = new Evaluator(model, run, pg, { rank, world, seed: job.seed });

  return {
    async run(b: SampleBatch, info: StepInfo): Promise<StepResult> {
      const S = info.step + 1;
      const t0 = performance.now();
      comm.gatherSeconds = 0;
      const batch = { n: b.n, images: b.images, labels: b.labels, indices: info.indices, epoch: info.epoch };
      const r = await computeGradients(model, batch, comm, lossOptions, false, optimizer.gradientBuffer);
      const tUpdate = performance.now();
      const u = await optimizer.update(r.grads, r.terms, S);
      model.assignFlat(optimizer.params);
      const computeSeconds = (tUpdate - t0) / 1000 - comm.gatherSeconds + u.optSeconds;
      const last = S === job.endStep;
      // The job's last checkpoint (the run's end, or where a signal stops it) is awaited before the step is reported.
      if (info.checkpoint) await saver.save(S, optimizer.params, optimizer.moments.m, optimizer.moments.v, last || info.final);
      if (last && rank === 0) await saveParams(run.out, run.resolved.model, optimizer.params, S, fixedPrompts);
      if (info.epochStep === job.stepsPerEpoch - 1 && !last) await evaluator.evaluate(evalEpochFile(info.epoch), false, S, info.epoch);
      if (last) await evaluator.evaluate(EVAL_FILE, true, S, info.epoch);
      return { images: b.n, losses: u.losses, timings: { compute: computeSeconds, gather: comm.gatherSeconds, reduce: u.reduceSeconds } };
    },
    paramsHash: () => paramsSha256(optimizer.params),
    async close() {
      await saver.close();
      model.dispose();
      await evaluator.close();
      await pg?.close();
    },
  };
}
