import {
  Field,
  FixedSizeList,
  Float32,
  RecordBatch,
  Schema,
  Struct,
  Uint8,
  Utf8,
  makeData,
  vectorFromArray,
  type Data,
} from 'apache-arrow';

/**
 * The column layout shared by dataset shards (Arrow IPC files) and the coordinator -> worker
 * wire format (Arrow IPC streams), so that a slice read from a shard goes out unchanged.
 *
 * - `image`: FixedSizeList<Uint8>[H*W], row-major grayscale pixels. A list of uint8 rather than
 *   FixedSizeBinary so that the element type is in the schema (pyarrow: `.flatten().to_numpy()`).
 * - `labels`: FixedSizeList<Float32>[L]: 1 positive, 0 negative, -1 uncertain, NaN not mentioned.
 *   NaN is a value, not an Arrow null: the whole column is one contiguous Float32Array.
 * - `subject_id`, `study_id`, `path`: Utf8; optional `report`: Utf8.
 * Schema metadata carries `cxr.height`, `cxr.width` so an empty batch still knows its image size.
 */
export interface SampleBatch {
  n: number;
  height: number;
  width: number;
  /** n*H*W pixels, row-major, sample after sample. */
  images: Uint8Array;
  /** n*L values: 1, 0, -1 uncertain, NaN not mentioned. */
  labels: Float32Array;
  subjectIds: string[];
  studyIds: string[];
  paths: string[];
  /** Free-text reports, present only when the dataset has a `report` column. */
  reports?: string[];
}

export const REQUIRED_COLUMNS = ['image', 'labels', 'subject_id', 'study_id', 'path'] as const;

export function datasetSchema(height: number, width: number, labelCount: number, withReport: boolean): Schema {
  const fields = [
    new Field('image', new FixedSizeList(height * width, new Field('pixel', new Uint8(), false)), false),
    new Field('labels', new FixedSizeList(labelCount, new Field('label', new Float32(), false)), false),
    new Field('subject_id', new Utf8(), false),
    new Field('study_id', new Utf8(), false),
    new Field('path', new Utf8(), false),
  ];
  if (withReport) fields.push(new Field('report', new Utf8(), false));
  return new Schema(
    fields,
    new Map([
      ['cxr.height', String(height)],
      ['cxr.width', String(width)],
    ]),
  );
}

/** Number of labels per sample, from a batch's sizes. */
export function labelCountOf(b: SampleBatch): number {
  if (b.n === 0) return 0;
  return b.labels.length / b.n;
}

export function checkBatchShape(b: SampleBatch, labelCount: number): void {
  const hw = b.height * b.width;
  if (b.images.length !== b.n * hw) throw new RangeError(`sample batch: images has ${b.images.length} bytes, expected ${b.n}*${hw}`);
  if (b.labels.length !== b.n * labelCount)
    throw new RangeError(`sample batch: labels has ${b.labels.length} values, expected ${b.n}*${labelCount}`);
  for (const [k, v] of [
    ['subjectIds', b.subjectIds],
    ['studyIds', b.studyIds],
    ['paths', b.paths],
  ] as const)
    if (v.length !== b.n) throw new RangeError(`sample batch: ${k} has ${v.length} entries, expected ${b.n}`);
  if (b.reports && b.reports.length !== b.n) throw new RangeError(`sample batch: reports has ${b.reports.length} entries, expected ${b.n}`);
}

function strings(values: string[]): Data<Utf8> {
  return vectorFromArray(values, new Utf8()).data[0]!;
}

/** A SampleBatch as an Arrow record batch of `schema` (buffers are shared, not copied). */
export function toRecordBatch(b: SampleBatch, schema: Schema): RecordBatch {
  const imageType = schema.fields[0]!.type as FixedSizeList;
  const labelType = schema.fields[1]!.type as FixedSizeList;
  const hw = imageType.listSize;
  const L = labelType.listSize;
  if (hw !== b.height * b.width) throw new RangeError(`sample batch is ${b.height}x${b.width}, schema expects ${hw} pixels`);
  checkBatchShape(b, L);
  const image = makeData({
    type: imageType,
    length: b.n,
    nullCount: 0,
    child: makeData({ type: imageType.children[0]!.type as Uint8, length: b.n * hw, nullCount: 0, data: b.images }),
  });
  const labels = makeData({
    type: labelType,
    length: b.n,
    nullCount: 0,
    child: makeData({ type: labelType.children[0]!.type as Float32, length: b.n * L, nullCount: 0, data: b.labels }),
  });
  const children: Data[] = [image, labels, strings(b.subjectIds), strings(b.studyIds), strings(b.paths)];
  const hasReport = schema.fields.some((f) => f.name === 'report');
  if (hasReport) children.push(strings(b.reports ?? new Array<string>(b.n).fill('')));
  const struct = makeData({ type: new Struct(schema.fields), length: b.n, nullCount: 0, children });
  return new RecordBatch(schema, struct);
}

/** Row-major values of a FixedSizeList column of one record batch, as a view when possible. */
function listValues<T extends Uint8Array | Float32Array>(rb: RecordBatch, name: string, stride: number): T {
  const col = rb.getChild(name);
  if (!col) throw new Error(`record batch has no '${name}' column`);
  const parts: T[] = [];
  for (const d of col.data) {
    const child = d.children[0]!;
    const start = child.offset + d.offset * stride;
    parts.push((child.values as T).subarray(start, start + d.length * stride) as T);
  }
  if (parts.length === 1) return parts[0]!;
  const total = parts.reduce((a, p) => a + p.length, 0);
  const out = (name === 'image' ? new Uint8Array(total) : new Float32Array(total)) as T;
  let at = 0;
  for (const p of parts) {
    out.set(p as never, at);
    at += p.length;
  }
  return out;
}

/** Row i of a Utf8 column, decoded on demand ('' for a null). */
function stringAt(rb: RecordBatch, name: string): (i: number) => string {
  const col = rb.getChild(name);
  if (!col) throw new Error(`record batch has no '${name}' column`);
  return (i) => (col.get(i) as string | null) ?? '';
}

/** Image size from the schema: metadata first, the list size as a square fallback. */
export function imageSizeOf(schema: Schema): { height: number; width: number; labelCount: number } {
  const image = schema.fields.find((f) => f.name === 'image');
  const labels = schema.fields.find((f) => f.name === 'labels');
  if (!image || !(image.type instanceof FixedSizeList)) throw new Error(`schema has no FixedSizeList 'image' column`);
  if (!labels || !(labels.type instanceof FixedSizeList)) throw new Error(`schema has no FixedSizeList 'labels' column`);
  const hw = image.type.listSize;
  let height = Number(schema.metadata.get('cxr.height'));
  let width = Number(schema.metadata.get('cxr.width'));
  if (!(height > 0 && width > 0 && height * width === hw)) {
    height = width = Math.round(Math.sqrt(hw));
    if (height * width !== hw) throw new Error(`image column of ${hw} pixels without cxr.height/cxr.width metadata`);
  }
  return { height, width, labelCount: labels.type.listSize };
}

/**
 * A record batch's columns: pixels and labels as views on its buffers (zero copy), the string
 * columns left encoded behind accessors, so that a reader picking a few rows out of a large
 * record batch decodes the strings of those rows only (decoding every row's ids and path was most
 * of the coordinator's time per step once a split outgrew the reader's cache).
 */
export interface RecordBatchColumns {
  n: number;
  height: number;
  width: number;
  images: Uint8Array;
  labels: Float32Array;
  subjectId(i: number): string;
  studyId(i: number): string;
  path(i: number): string;
  /** Present only when the batch has a `report` column. */
  report?(i: number): string;
}

export function recordBatchColumns(rb: RecordBatch): RecordBatchColumns {
  const { height, width, labelCount } = imageSizeOf(rb.schema);
  const c: RecordBatchColumns = {
    n: rb.numRows,
    height,
    width,
    images: listValues<Uint8Array>(rb, 'image', height * width),
    labels: listValues<Float32Array>(rb, 'labels', labelCount),
    subjectId: stringAt(rb, 'subject_id'),
    studyId: stringAt(rb, 'study_id'),
    path: stringAt(rb, 'path'),
  };
  if (rb.schema.fields.some((f) => f.name === 'report')) c.report = stringAt(rb, 'report');
  return c;
}

/**
 * A record batch as a SampleBatch. Pixels and labels are views on the batch's buffers (zero
 * copy); copy them before the buffers are reused.
 */
export function fromRecordBatch(rb: RecordBatch): SampleBatch {
  const c = recordBatchColumns(rb);
  const all = (at: (i: number) => string) => Array.from({ length: c.n }, (_, i) => at(i));
  const b: SampleBatch = {
    n: c.n,
    height: c.height,
    width: c.width,
    images: c.images,
    labels: c.labels,
    subjectIds: all(c.subjectId),
    studyIds: all(c.studyId),
    paths: all(c.path),
  };
  if (c.report) b.reports = all(c.report);
  return b;
}

/** The first label value that is not 1, 0, -1 or NaN (blank), by row and label; null when all are. */
export function invalidLabel(labels: ArrayLike<number>, labelCount: number): { row: number; label: number; value: number } | null {
  for (let i = 0; i < labels.length; i++) {
    const v = labels[i]!;
    if (v !== 1 && v !== 0 && v !== -1 && !Number.isNaN(v)) return { row: Math.floor(i / labelCount), label: i % labelCount, value: v };
  }
  return null;
}
