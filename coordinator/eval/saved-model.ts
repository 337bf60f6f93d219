import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { checkpointsDir, loadCheckpoint } from '../../shared/checkpoint/index.js';
import { UserError } from '../../shared/util/errors.js';
import { createProgress } from '../../shared/util/progress.js';
import type { LabelSet } from '../../shared/labels.js';
import { aurocReport, type AurocReport } from '../../shared/metrics/auroc.js';
import { initBackend, type BackendChoice } from '../../kernels/backend.js';
import type { ModelConfig } from '../../model/config.js';
import { loadParams } from '../../model/params-file.js';
import { CxrModel } from '../../model/vit.js';
import { loadPretrainedModel } from '../../model/pretrained/model.js';
import { scoreRows } from '../../model/predict.js';
import { promptLogits, promptPairs } from '../../model/zero-shot.js';
import { labelSetFor, type SplitName, type TrainData } from '../train/config.js';
import { CHECKPOINT_MANIFEST_FILE, MODEL_JSON_FILE, type ZeroShotRecord } from '../../shared/run/files.js';

/** A saved model (run directory or checkpoint), loaded and evaluated in this process: `coordinator eval`, `embed`. */

/**
 * Every row's scores [n*L] and raw labels on a split, read in chunks: the model's logits, or
 * `score` of its image embeddings (zero-shot).
 */
export async function scoreSplit(
  model: CxrModel,
  data: TrainData,
  splitName: SplitName,
  score?: (z: tf.Tensor2D) => tf.Tensor2D,
): Promise<{ scores: Float32Array; labels: Float32Array; n: number }> {
  const split = data.split(splitName);
  if (split.length === 0) throw new UserError(`the ${splitName} split of the dataset is empty; use --eval with another split or none`);
  const bar = createProgress({ label: `eval ${splitName}`, total: split.length, unit: 'images' });
  const { scores, labels } = await scoreRows(
    model,
    split,
    { start: 0, end: split.length },
    { chunk: 64, scores: true, embeddings: false, ...(score ? { score } : {}), onChunk: (_b, _out, done) => bar.update(done) },
  );
  bar.stop();
  return { scores: scores!, labels, n: split.length };
}

/** Per-label AUROC of a model on a split (of its logits, or of `score`). */
export async function evaluate(
  model: CxrModel,
  data: TrainData,
  splitName: SplitName,
  set: LabelSet | null,
  bootstrap: { replicates: number; seed: number },
  score?: (z: tf.Tensor2D) => tf.Tensor2D,
): Promise<AurocReport & { split: string }> {
  const { scores, labels, n } = await scoreSplit(model, data, splitName, score);
  const rep = aurocReport(
    { scores, labels, n, labelNames: model.config.labels },
    set?.competition ?? [],
    bootstrap.replicates > 0 ? bootstrap : undefined,
  );
  return { split: splitName, ...rep };
}

/**
 * A trained model from a run directory's model.json/model.bin, or from a sharded checkpoint (a
 * step directory, or a run directory without model.json: its newest committed checkpoint).
 */
export async function loadSavedModel(
  where: string,
): Promise<{ doc: { config: ModelConfig; fixedPrompts?: number[] | null }; params: Float32Array }> {
  const isStep = existsSync(path.join(where, CHECKPOINT_MANIFEST_FILE));
  const isRunWithoutModel = !existsSync(path.join(where, MODEL_JSON_FILE)) && existsSync(checkpointsDir(where)) && !where.endsWith('.json');
  if (!isStep && !isRunWithoutModel) return loadParams(where);
  const ck = await loadCheckpoint(where, { layout: 'checkpoint', world: 1, rank: 0, moments: false });
  const c = ck.manifest.config as { model?: ModelConfig; fixedPrompts?: number[] | null } | null;
  if (!c?.model)
    throw new UserError(
      `${ck.dir}: the checkpoint's config has no model section (not written by the trainer); use coordinator export for its weights`,
    );
  return { doc: { config: c.model, fixedPrompts: c.fixedPrompts ?? null }, params: ck.params };
}

/**
 * `coordinator eval`: load a saved model and evaluate it on a split; with `zeroShot`, by the
 * prompt softmax (model/zero-shot.ts, ranked by its log-odds) instead of its classifier, the
 * report saying so (`zero_shot`).
 */
export async function evalSaved(
  checkpoint: ModelSource,
  data: TrainData,
  splitName: SplitName,
  backendChoice: BackendChoice,
  bootstrap: { replicates: number; seed: number },
  log: (line: string) => void,
  opts: { zeroShot?: boolean } = {},
): Promise<AurocReport & { split: string; zero_shot?: ZeroShotRecord }> {
  const backend = await initBackend(backendChoice);
  log(`backend: ${backend.name} (${backend.reason})`);
  const set = labelSetFor(data.labelSet, data.labelNames);
  if (opts.zeroShot) {
    const zs = await loadZeroShot(checkpoint, data.labelNames, data.imageSize);
    try {
      log(
        `zero-shot: ${zs.record.prompts === 'tower' ? "the pretrained towers' embeddings" : "the run's prompt embeddings through its heads"}`,
      );
      const pairs = await promptPairs(zs.model, zs.record.prompts);
      try {
        const rep = await evaluate(zs.model, data, splitName, set, bootstrap, (z) => promptLogits(z, pairs));
        return { ...rep, zero_shot: { ...zs.record, logit_scale: pairs.scale } };
      } finally {
        pairs.dispose();
      }
    } finally {
      zs.model.dispose();
    }
  }
  const model = await loadModelFor(checkpoint, data.labelNames, data.imageSize);
  try {
    return await evaluate(model, data, splitName, set, bootstrap);
  } finally {
    model.dispose();
  }
}

/**
 * The model of a zero-shot evaluation and where its prompts come from. A pretrained directory:
 * its towers as imported, the prompts its text tower's (the untrained heads bypassed; refused
 * without a text tower). A trained run: the run's model, prompts through its text head (refused
 * for a linear head, which has no prompts).
 */
export async function loadZeroShot(
  source: ModelSource,
  labels: readonly string[],
  imageSize: number,
): Promise<{ model: CxrModel; record: Omit<ZeroShotRecord, 'logit_scale'> }> {
  if (typeof source !== 'string') {
    const { config, params, fixedPrompts } = await loadPretrainedModel(source.pretrained, {
      imageSize,
      labels: [...labels],
      textTower: true,
    });
    if (!fixedPrompts)
      throw new UserError(
        `${config.pretrained!.weights}: no text tower in the weights; zero-shot scores each label by its Positive and Negative prompts, which needs the text tower (CLIP and BiomedCLIP checkpoints hold both towers)`,
      );
    return {
      model: new CxrModel(config, params, fixedPrompts),
      record: { prompts: 'tower', from: source.pretrained, weights: config.pretrained!.weights, sha256: config.pretrained!.sha256 },
    };
  }
  const model = await loadModelFor(source, labels, imageSize);
  if (model.config.head !== 'text') {
    model.dispose();
    throw new UserError(
      `${source}: the model has the linear head (visual only) and no label prompts to score by; zero-shot needs a run with the text head, or --pretrained DIR`,
    );
  }
  const pre = model.config.pretrained;
  return {
    model,
    record: { prompts: 'heads', from: source, ...(pre ? { pretrained: { weights: pre.weights, sha256: pre.sha256 } } : {}) },
  };
}

/** Where eval and embed take a model from: a saved run or checkpoint, or a pretrained directory (--pretrained). */
export type ModelSource = string | { pretrained: string };

/** A display name of a model source, for logs and file metadata. */
export function sourceName(source: ModelSource): string {
  return typeof source === 'string' ? source : source.pretrained;
}

/**
 * A saved model, refused unless it was trained on exactly these labels and this image size; or a
 * pretrained directory's model for them (its image tower as imported, the heads freshly initialised).
 */
export async function loadModelFor(source: ModelSource, labels: readonly string[], imageSize: number): Promise<CxrModel> {
  if (typeof source !== 'string') {
    const { config, params } = await loadPretrainedModel(source.pretrained, { imageSize, labels: [...labels] });
    return new CxrModel(config, params);
  }
  const checkpoint = source;
  const { doc, params } = await loadSavedModel(checkpoint);
  if (doc.config.labels.length !== labels.length || doc.config.labels.some((l, i) => l !== labels[i]))
    throw new UserError(
      `${checkpoint}: the model was trained on labels [${doc.config.labels.join(', ')}], the dataset has [${labels.join(', ')}]`,
    );
  if (doc.config.imageSize !== imageSize)
    throw new UserError(`${checkpoint}: the model takes ${doc.config.imageSize}px images, the dataset has ${imageSize}px`);
  return new CxrModel(doc.config, params, doc.fixedPrompts ? Float32Array.from(doc.fixedPrompts) : undefined);
}
