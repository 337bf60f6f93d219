import { RecordBatchReader, RecordBatchStreamWriter } from 'apache-arrow';
import { datasetSchema, fromRecordBatch, imageSizeOf, labelCountOf, toRecordBatch, type SampleBatch } from './columns.js';

/**
 * The coordinator -> worker data message: an Arrow IPC *stream* holding the schema and exactly
 * one record batch with the dataset columns (zero rows allowed). The label count comes from the
 * schema, so an empty batch still decodes to the right shapes.
 */
export function encodeBatch(b: SampleBatch, labelCount = labelCountOf(b)): Uint8Array {
  const schema = datasetSchema(b.height, b.width, labelCount, b.reports !== undefined);
  const w = new RecordBatchStreamWriter();
  w.write(toRecordBatch(b, schema));
  w.finish();
  return w.toUint8Array(true);
}

/** Inverse of encodeBatch. Pixels and labels are views on `bytes` when aligned: do not reuse it. */
export function decodeBatch(bytes: Uint8Array): SampleBatch {
  const reader = RecordBatchReader.from(bytes);
  reader.open();
  const schema = reader.schema;
  if (!schema) throw new Error('data message: no Arrow schema');
  const batches = [...reader];
  if (batches.length !== 1) throw new Error(`data message: expected one record batch, got ${batches.length}`);
  const rb = batches[0]!;
  if (rb.numRows === 0) {
    const { height, width } = imageSizeOf(rb.schema);
    const b: SampleBatch = {
      n: 0,
      height,
      width,
      images: new Uint8Array(0),
      labels: new Float32Array(0),
      subjectIds: [],
      studyIds: [],
      paths: [],
    };
    if (rb.schema.fields.some((f) => f.name === 'report')) b.reports = [];
    return b;
  }
  return fromRecordBatch(rb);
}
