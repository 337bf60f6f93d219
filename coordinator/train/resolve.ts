import type { Dataset } from '../../shared/dataset/reader.js';
import type { ParamLayout } from '../../shared/params.js';
import { UserError } from '../../shared/util/errors.js';
import type { Logger } from '../../shared/util/log.js';
import { labelPriorTarget } from '../../model/label-prior.js';
import { uncertaintyPolicies } from '../../model/targets.js';
import { type Rgb, withTextHead, withVisualHead } from '../../model/config.js';
import { readPretrainedDir } from '../../model/pretrained/dir.js';
import { modelConfigFor } from '../../model/pretrained/model.js';
import { pretrainedTextSource } from '../../model/text/pretrained.js';
import { loadTextEmbeddings } from '../../model/text-embeddings.js';
import { DEFAULT_ADAMW, type RunConfig, type TrainConfig } from '../../model/train-config.js';
import { modelLayout } from '../../model/vit.js';
import { frozenEntries, groupOptions, lrMultipliers } from '../../model/param-groups.js';
import { datasetRowSource } from '../data/dataset-source.js';
import type { RowSource } from '../job/data-feed.js';
import { Sampler } from '../job/sampler.js';
import { labelSetFor } from './config.js';
import { trainingPosWeights } from './pos-weights.js';

/** A training config checked against its dataset, with everything derived from the two. */
export interface ResolvedRun {
  /** The config and what was derived from it: config.json, and what the ranks build from. */
  readonly run: RunConfig;
  /** Fixed prompt vectors (--text-embeddings, or a frozen pretrained text tower's), or null. */
  readonly fixedPrompts: number[] | null;
  readonly layout: ParamLayout;
  /** The entries --freeze leaves out of the optimizer state (the checkpoints record them). */
  readonly frozen: readonly string[];
  readonly source: RowSource;
  readonly sampler: Sampler;
}

/** Check `cfg` against the opened dataset and derive the model, the schedule's length and the loss options. */
export async function resolveRun(cfg: TrainConfig, ds: Dataset, log: Logger): Promise<ResolvedRun> {
  const { height, width } = ds.manifest.image;
  if (height !== width)
    throw new UserError(`${cfg.data}: images are ${height}x${width}; the model needs square images (prepare with --image-size)`);
  const labels = [...ds.labelNames];
  const source = datasetRowSource(ds);
  if (source.size < cfg.batchSize)
    throw new UserError(`--batch-size ${cfg.batchSize} is larger than the ${source.size} training images in ${cfg.data}`);
  if (cfg.batchSize < cfg.workers)
    throw new UserError(
      `--batch-size ${cfg.batchSize} (global) is smaller than --workers ${cfg.workers}: every worker needs at least one image per step`,
    );
  const sampler = new Sampler({ size: source.size, globalBatch: cfg.batchSize, seed: cfg.seed });
  const stepsPerEpoch = sampler.stepsPerEpoch;
  const totalSteps = cfg.steps ?? (cfg.epochs ?? 1) * stepsPerEpoch;
  if (cfg.eval !== 'none' && ds.split(cfg.eval).length === 0)
    throw new UserError(`the ${cfg.eval} split of ${cfg.data} is empty; use --eval with another split or none`);
  const text = cfg.textEmbeddings ? loadTextEmbeddings(cfg.textEmbeddings, labels) : null;
  const image = cfg.imageMean && cfg.imageStd ? { mean: cfg.imageMean as unknown as Rgb, std: cfg.imageStd as unknown as Rgb } : undefined;
  let model = withVisualHead(
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
    log.info(`pretrained ${model.pretrained.tower} image tower from ${model.pretrained.weights} (sha256 ${model.pretrained.sha256})`);
  let fixedPrompts = text ? Array.from(text.vectors) : null;
  if (cfg.textTower && (!cfg.pretrained || cfg.textEmbeddings || cfg.head !== 'text'))
    throw new UserError(
      '--text-tower needs --pretrained DIR and the text head, without --text-embeddings (which fixes the prompts itself)',
    );
  if (cfg.pretrained && cfg.head === 'text' && !cfg.textEmbeddings) {
    const towered = await pretrainedTextSource(await readPretrainedDir(cfg.pretrained), labels, cfg.textTower ?? null, {
      states: cfg.textHead === 'transformer',
    });
    if (towered) {
      model = { ...model, text: towered.text };
      fixedPrompts = towered.fixedPrompts ? Array.from(towered.fixedPrompts) : null;
      log.info(
        `pretrained ${towered.text.kind === 'tower' ? 'text tower trained in the step' : 'text tower, prompts encoded once (frozen)'}`,
      );
    } else log.info('the pretrained weights hold no text tower: the prompts are learned (--text-embeddings gives fixed ones)');
  }
  model = withTextHead(model, cfg.textHead ?? 'mlp', cfg.textHeadLayers ?? 1);
  const set = labelSetFor(ds.manifest.labelSet, labels);
  const posWeight = cfg.posWeight === 'balanced' ? await trainingPosWeights(ds) : null;
  const layout = modelLayout(model);
  const run: RunConfig = {
    ...cfg,
    resolved: {
      model,
      parameters: layout.total,
      totalSteps,
      stepsPerEpoch,
      perWorkerBatch: cfg.batchSize / cfg.workers,
      labelSet: set?.name ?? null,
      adamw: { ...DEFAULT_ADAMW, weightDecay: cfg.weightDecay },
      posWeight: posWeight ? Array.from(posWeight) : null,
      uncertainty: uncertaintyPolicies(labels, cfg.uncertainty, cfg.uncertaintyLabel),
      // The names' target; the state prompts' is the identity (model/prior-scope.ts).
      priorTarget: cfg.priorScope === 'states' ? [] : Array.from(labelPriorTarget(cfg.labelPrior, labels, set)),
      competition: [...(set?.competition ?? [])],
    },
  };
  // The fine-tuning controls against this model (a --freeze of a tower it lacks is an error now, not
  // in the workers), from the resolved run as the ranks derive them (a frozen text tower's readout included).
  const frozen = frozenEntries(layout, lrMultipliers(layout, groupOptions(run)));
  return { run, fixedPrompts, layout, frozen, source, sampler };
}
