import {
  Field,
  FixedSizeList,
  Float32,
  RecordBatch,
  RecordBatchFileWriter,
  Schema,
  Struct,
  Utf8,
  makeData,
  vectorFromArray,
} from 'apache-arrow';
import { openDataset } from '../../shared/dataset/reader.js';
import { UserError } from '../../shared/util/errors.js';
import { writeFileAtomic } from '../../shared/util/fs-atomic.js';
import { initBackend, type BackendChoice } from '../../kernels/backend.js';
import { scoreRows } from '../../model/predict.js';
import { loadModelFor, type ModelSource, sourceName } from './saved-model.js';
import type { SplitName } from '../train/config.js';

/**
 * `coordinator embed`: the image embeddings of a split under a saved model, for users' own
 * analysis (UMAP plots, retrieval, probing), as one Arrow IPC file:
 * - `embedding`: FixedSizeList<Float32>[D], L2-normalised (the model compares by cosine),
 * - `labels`: FixedSizeList<Float32>[L] as in the dataset (1, 0, -1, NaN),
 * - `subject_id`, `study_id`, `path`: Utf8,
 * with schema metadata `cxr.labels` (JSON array), `cxr.split`, `cxr.checkpoint`, `cxr.model`.
 * The split is read and embedded in chunks; the file is built in memory (n*(D+L)*4 bytes plus
 * the strings) and written atomically.
 */
export interface EmbedResult {
  readonly rows: number;
  readonly dim: number;
  readonly bytes: number;
}

const CHUNK = 128;

export async function embedSplit(
  o: { checkpoint: ModelSource; data: string; split: SplitName; out: string; backend: BackendChoice },
  log: (line: string) => void,
): Promise<EmbedResult> {
  const backend = await initBackend(o.backend);
  log(`backend: ${backend.name} (${backend.reason})`);
  const ds = await openDataset(o.data);
  try {
    const { height } = ds.manifest.image;
    const model = await loadModelFor(o.checkpoint, ds.labelNames, height);
    try {
      const split = ds.split(o.split);
      if (split.length === 0) throw new UserError(`${o.data}: the ${o.split} split is empty; choose another --split`);
      const L = ds.labelNames.length;
      const dim = model.config.embedDim;
      const schema = embeddingSchema(dim, L, {
        labels: ds.labelNames,
        split: o.split,
        checkpoint: sourceName(o.checkpoint),
        model: model.config.preset,
      });
      const batches: RecordBatch[] = [];
      await scoreRows(
        model,
        split,
        { start: 0, end: split.length },
        {
          chunk: CHUNK,
          scores: false,
          embeddings: true,
          onChunk: (b, out) => batches.push(toBatch(schema, b.n, out.embeddings!, b.labels, b.subjectIds, b.studyIds, b.paths)),
        },
      );
      const bytes = RecordBatchFileWriter.writeAll(batches).toUint8Array(true);
      await writeFileAtomic(o.out, bytes);
      return { rows: split.length, dim, bytes: bytes.byteLength };
    } finally {
      model.dispose();
    }
  } finally {
    await ds.close();
  }
}

function embeddingSchema(
  dim: number,
  labels: number,
  meta: { labels: readonly string[]; split: string; checkpoint: string; model: string },
): Schema {
  return new Schema(
    [
      new Field('embedding', new FixedSizeList(dim, new Field('value', new Float32(), false)), false),
      new Field('labels', new FixedSizeList(labels, new Field('label', new Float32(), false)), false),
      new Field('subject_id', new Utf8(), false),
      new Field('study_id', new Utf8(), false),
      new Field('path', new Utf8(), false),
    ],
    new Map([
      ['cxr.labels', JSON.stringify(meta.labels)],
      ['cxr.split', meta.split],
      ['cxr.checkpoint', meta.checkpoint],
      ['cxr.model', meta.model],
    ]),
  );
}

function fixedList(type: FixedSizeList, n: number, values: Float32Array) {
  return makeData({
    type,
    length: n,
    nullCount: 0,
    child: makeData({ type: type.children[0]!.type as Float32, length: values.length, nullCount: 0, data: values }),
  });
}

function toBatch(
  schema: Schema,
  n: number,
  emb: Float32Array,
  labels: Float32Array,
  subjects: string[],
  studies: string[],
  paths: string[],
): RecordBatch {
  const str = (v: string[]) => vectorFromArray(v, new Utf8()).data[0]!;
  const children = [
    fixedList(schema.fields[0]!.type as FixedSizeList, n, emb),
    fixedList(schema.fields[1]!.type as FixedSizeList, n, labels),
    str(subjects),
    str(studies),
    str(paths),
  ];
  return new RecordBatch(schema, makeData({ type: new Struct(schema.fields), length: n, nullCount: 0, children }));
}
