import { existsSync } from 'node:fs';
import * as path from 'node:path';
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
import { labelSetFor, type SplitName, type TrainData } from '../train/config.js';
import { CHECKPOINT_MANIFEST_FILE, MODEL_JSON_FILE } from '../../shared/run/files.js';

/** A saved model (run directory or checkpoint), loaded and evaluated in this process: `coordinator eval`, `embed`. */

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
  const bar = createProgress({ label: `eval ${splitName}`, total: split.length, unit: 'images' });
  const { scores, labels } = await scoreRows(
    model,
    split,
    { start: 0, end: split.length },
    { chunk: 64, scores: true, embeddings: false, onChunk: (_b, _out, done) => bar.update(done) },
  );
  bar.stop();
  const competition = set?.competition ?? [];
  const rep = aurocReport(
    { scores: scores!, labels, n: split.length, labelNames: model.config.labels },
    competition,
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

/** `coordinator eval`: load a saved model and evaluate it on a split. */
export async function evalSaved(
  checkpoint: ModelSource,
  data: TrainData,
  splitName: SplitName,
  backendChoice: BackendChoice,
  bootstrap: { replicates: number; seed: number },
  log: (line: string) => void,
) {
  const backend = await initBackend(backendChoice);
  log(`backend: ${backend.name} (${backend.reason})`);
  const model = await loadModelFor(checkpoint, data.labelNames, data.imageSize);
  try {
    return await evaluate(model, data, splitName, labelSetFor(data.labelSet, data.labelNames), bootstrap);
  } finally {
    model.dispose();
  }
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
