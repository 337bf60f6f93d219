import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import { RecordBatch, RecordBatchFileWriter, RecordBatchReader, Struct, Utf8, makeData, vectorFromArray } from 'apache-arrow';
import { DatasetWriter, type Sample } from '../../shared/dataset/writer.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { readManifest } from '../../shared/dataset/manifest.js';
import { encodeBatch, decodeBatch } from '../../shared/dataset/wire.js';
import type { SampleBatch } from '../../shared/dataset/columns.js';
import { UserError } from '../../shared/util/errors.js';

const H = 6;
const W = 5;
const LABELS = ['A', 'B', 'C'];

/** Sample i of the toy dataset: every field derived from i, so reads can be checked exactly. */
function sample(i: number): Sample {
  const image = new Uint8Array(H * W);
  for (let p = 0; p < image.length; p++) image[p] = (i * 7 + p) & 255;
  const labels = [i % 3 === 0 ? 1 : 0, i % 5 === 0 ? -1 : NaN, [1, 0, -1, NaN][i % 4]!];
  return { image, labels, subjectId: `p${Math.floor(i / 3)}`, studyId: `s${i}`, path: `img/${i}.png` };
}

function expectRow(b: SampleBatch, j: number, i: number): void {
  const s = sample(i);
  assert.deepEqual(b.images.subarray(j * H * W, (j + 1) * H * W), s.image, `pixels of row ${j} (sample ${i})`);
  const got = [...b.labels.subarray(j * 3, j * 3 + 3)];
  const want = [...Float32Array.from(s.labels)];
  assert.deepEqual(got, want);
  assert.equal(b.subjectIds[j], s.subjectId);
  assert.equal(b.studyIds[j], s.studyId);
  assert.equal(b.paths[j], s.path);
}

async function writeToy(dir: string, counts: { train: number; val: number; test: number }): Promise<void> {
  const w = new DatasetWriter(dir, { height: H, width: W, labelSet: 'toy', labels: LABELS, rowsPerBatch: 4, batchesPerShard: 3 });
  let i = 0;
  for (const split of ['train', 'val', 'test'] as const) for (let k = 0; k < counts[split]; k++) await w.add(split, sample(i++));
  await w.finish({ createdBy: 'test', source: {} });
}

test('dataset writer + reader: random access by index returns exactly the written rows, in the asked order', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-ds-'));
  try {
    await writeToy(dir, { train: 29, val: 5, test: 0 });
    const m = await readManifest(dir);
    assert.equal(m.splits.train.rows, 29);
    // 29 rows, 4 per batch, 3 batches per shard -> shards of 12, 12, 5 rows.
    assert.deepEqual(
      m.splits.train.shards.map((s) => [s.rows, s.batches]),
      [
        [12, 3],
        [12, 3],
        [5, 2],
      ],
    );
    assert.equal(m.splits.test.shards.length, 0);
    const ds = await openDataset(dir, { cacheBytes: 1 });
    assert.deepEqual(ds.labelNames, LABELS);
    const train = ds.split('train');
    assert.equal(train.length, 29);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(28), { maxLength: 40 }), async (idx) => {
        const b = await train.read(idx);
        assert.equal(b.n, idx.length);
        assert.equal(b.height, H);
        idx.forEach((i, j) => expectRow(b, j, i));
      }),
      { numRuns: 60 },
    );
    // ShardWriter's record batches are read row by row, never decoded whole.
    assert.ok(train.stats.batches > 0);
    assert.equal(train.stats.wholeBatches, 0);
    const val = await ds.split('val').read([4, 0]);
    expectRow(val, 0, 33);
    expectRow(val, 1, 29);
    assert.equal((await ds.split('test').read([])).n, 0);
    await assert.rejects(train.read([29]), RangeError);
    await ds.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reader: a manifest with a bad field, and a shard that is not Arrow, are named in the error', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-ds-'));
  try {
    await writeToy(dir, { train: 5, val: 0, test: 0 });
    const mf = path.join(dir, 'manifest.json');
    const good = readFileSync(mf, 'utf8');
    const doc = JSON.parse(good);
    doc.image.channels = 3;
    writeFileSync(mf, JSON.stringify(doc));
    await assert.rejects(openDataset(dir), (e: unknown) => e instanceof UserError && /manifest\.json.*'image\.channels'/.test(e.message));
    writeFileSync(mf, good);
    writeFileSync(path.join(dir, 'train-00000.arrow'), 'not arrow at all');
    const ds = await openDataset(dir);
    await assert.rejects(ds.split('train').read([0]), (e: unknown) => e instanceof UserError && /train-00000\.arrow/.test(e.message));
    await ds.close();
    await assert.rejects(openDataset(path.join(dir, 'nope')), /manifest\.json not found/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reader: record batches with nulls (written by another tool) are decoded whole and read the same', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-ds-'));
  try {
    await writeToy(dir, { train: 12, val: 0, test: 0 });
    // Rewrite the shard with the 'path' of every third row null: same schema, same record batches.
    const file = path.join(dir, 'train-00000.arrow');
    const src = RecordBatchReader.from(readFileSync(file));
    const writer = new RecordBatchFileWriter();
    let row = 0;
    for (const rb of src) {
      const paths = Array.from({ length: rb.numRows }, (_, i) => ((row + i) % 3 === 0 ? null : sample(row + i).path));
      const children = rb.data.children.map((c, k) =>
        rb.schema.fields[k]!.name === 'path' ? vectorFromArray(paths, new Utf8()).data[0]! : c,
      );
      writer.write(
        new RecordBatch(rb.schema, makeData({ type: new Struct(rb.schema.fields), length: rb.numRows, nullCount: 0, children })),
      );
      row += rb.numRows;
    }
    writer.finish();
    writeFileSync(file, writer.toUint8Array(true));
    const ds = await openDataset(dir);
    const train = ds.split('train');
    const idx = [11, 0, 5, 3, 7, 7, 1];
    const b = await train.read(idx);
    idx.forEach((i, j) => {
      expectRow({ ...b, paths: b.paths.map((p, k) => (idx[k]! % 3 === 0 ? sample(idx[k]!).path : p)) }, j, i);
      if (i % 3 === 0) assert.equal(b.paths[j], '', `row ${i}'s null path`);
    });
    assert.ok(train.stats.batches > 0);
    assert.equal(train.stats.wholeBatches, train.stats.batches);
    await ds.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reader: a record batch whose metadata is damaged is named in the error, whichever path reads it', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-ds-'));
  try {
    await writeToy(dir, { train: 12, val: 0, test: 0 });
    const file = path.join(dir, 'train-00000.arrow');
    const bytes = readFileSync(file);
    const src = RecordBatchReader.from(bytes);
    src.open();
    const block = (
      src as unknown as { footer: { getRecordBatch(i: number): { offset: number; metaDataLength: number } } }
    ).footer.getRecordBatch(1);
    // Overwrite the flatbuffer of record batch 1's message (after the marker and the length).
    bytes.fill(0xa5, block.offset + 8, block.offset + block.metaDataLength);
    writeFileSync(file, bytes);
    const ds = await openDataset(dir);
    const train = ds.split('train');
    expectRow(await train.read([0]), 0, 0);
    await assert.rejects(train.read([5]), (e: unknown) => e instanceof UserError && /train-00000\.arrow: record batch 1/.test(e.message));
    await ds.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('wire: encodeBatch/decodeBatch round-trip, NaN labels and empty batches included', () => {
  const rows = [0, 5, 10, 3];
  const b: SampleBatch = {
    n: rows.length,
    height: H,
    width: W,
    images: new Uint8Array(rows.length * H * W),
    labels: new Float32Array(rows.length * 3),
    subjectIds: [],
    studyIds: [],
    paths: [],
  };
  rows.forEach((i, j) => {
    const s = sample(i);
    b.images.set(s.image, j * H * W);
    b.labels.set(Float32Array.from(s.labels), j * 3);
    b.subjectIds.push(s.subjectId);
    b.studyIds.push(s.studyId);
    b.paths.push(s.path);
  });
  const d = decodeBatch(encodeBatch(b));
  assert.equal(d.n, 4);
  assert.equal(d.width, W);
  rows.forEach((i, j) => expectRow(d, j, i));
  assert.ok(Number.isNaN(d.labels[3 * 3 + 1]), 'NaN (not mentioned) survives the wire');
  const empty = decodeBatch(
    encodeBatch(
      { n: 0, height: 64, width: 32, images: new Uint8Array(0), labels: new Float32Array(0), subjectIds: [], studyIds: [], paths: [] },
      14,
    ),
  );
  assert.deepEqual([empty.n, empty.height, empty.width, empty.images.length, empty.labels.length], [0, 64, 32, 0, 0]);
  const withReports = decodeBatch(encodeBatch({ ...b, reports: ['a', 'b', '', 'd'] }));
  assert.deepEqual(withReports.reports, ['a', 'b', '', 'd']);
});
