import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../shared/util/errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../shared/util/fs-atomic.js';
import { layoutMismatch, type ParamLayout } from '../shared/params.js';
import type { ModelConfig } from './config.js';
import { modelLayout } from './vit.js';
import { MODEL_BIN_FILE, MODEL_JSON_FILE } from '../shared/run/files.js';

/**
 * Interim single-file parameter format (until sharded checkpoints replace it):
 * `model.bin` holds the flat float32 vector (little-endian, layout order); `model.json`, written
 * last, names the configuration, the layout and the sha256 of model.bin. A directory without
 * model.json holds no model.
 */
export const PARAMS_FORMAT = 'cxr-align-params';

export interface ParamsDoc {
  format: typeof PARAMS_FORMAT;
  version: 1;
  step: number;
  config: ModelConfig;
  total: number;
  sha256: string;
  layout: { name: string; shape: number[]; offset: number }[];
  /** Fixed prompt embeddings from --text-embeddings, when used (they are part of the model). */
  fixedPrompts?: number[];
}

export async function saveParams(
  dir: string,
  config: ModelConfig,
  params: Float32Array,
  step: number,
  fixedPrompts?: Float32Array,
): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const bytes = new Uint8Array(params.buffer, params.byteOffset, params.byteLength);
  const layout = modelLayout(config);
  await writeFileAtomic(path.join(dir, MODEL_BIN_FILE), bytes);
  const doc: ParamsDoc = {
    format: PARAMS_FORMAT,
    version: 1,
    step,
    config,
    total: layout.total,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    layout: layout.entries.map((e) => ({ name: e.name, shape: [...e.shape], offset: e.offset })),
    ...(fixedPrompts ? { fixedPrompts: Array.from(fixedPrompts) } : {}),
  };
  await writeJsonAtomic(path.join(dir, MODEL_JSON_FILE), doc);
}

/** Load a saved model from its directory (or the path of its model.json), verifying shape and checksum. */
export async function loadParams(where: string): Promise<{ doc: ParamsDoc; params: Float32Array; layout: ParamLayout }> {
  const dir = where.endsWith('.json') ? path.dirname(where) : where;
  const jsonPath = path.join(dir, MODEL_JSON_FILE);
  let doc: ParamsDoc;
  try {
    doc = JSON.parse(await fsp.readFile(jsonPath, 'utf8')) as ParamsDoc;
  } catch (e) {
    throw new UserError(
      `${jsonPath}: cannot read a saved model (${(e as Error).message}); point --checkpoint at a run directory that finished training`,
    );
  }
  if (doc.format !== PARAMS_FORMAT) throw new UserError(`${jsonPath}: not a ${PARAMS_FORMAT} file`);
  const layout = modelLayout(doc.config);
  const saved: ParamLayout = {
    total: doc.total,
    entries: doc.layout.map((e) => ({ ...e, size: e.shape.reduce((a, b) => a * b, 1), decay: false })),
  };
  const mismatch = layoutMismatch(layout, saved);
  if (mismatch) throw new UserError(`${jsonPath}: ${mismatch}`);
  const binPath = path.join(dir, MODEL_BIN_FILE);
  const buf = await fsp.readFile(binPath).catch((e: Error) => {
    throw new UserError(`${binPath}: ${e.message}`);
  });
  if (buf.length !== layout.total * 4) throw new UserError(`${binPath}: ${buf.length} bytes, expected ${layout.total * 4}`);
  if (createHash('sha256').update(buf).digest('hex') !== doc.sha256)
    throw new UserError(`${binPath}: sha256 does not match ${MODEL_JSON_FILE}; the file is damaged, retrain or restore it`);
  const params = new Float32Array(layout.total);
  new Uint8Array(params.buffer).set(buf);
  return { doc, params, layout };
}
