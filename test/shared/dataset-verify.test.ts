import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { readManifest } from '../../shared/dataset/manifest.js';
import { invalidLabel } from '../../shared/dataset/columns.js';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import { createLogger } from '../../shared/util/log.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const args = (data: string, out: string): TrainArgs =>
  ({
    ...SMALL_RUN_FLAGS,
    workers: 1,
    data,
    out,
    steps: 4,
    'batch-size': 8,
    seed: 1,
    eval: 'test',
    backend: 'wasm',
    lr: 1e-3,
    'warmup-steps': 1,
    uncertainty: 'ignore',
    'pos-weight': 'none',
  }) as unknown as TrainArgs;

test('invalidLabel finds the first value other than 1, 0, -1 and NaN', () => {
  assert.equal(invalidLabel(Float32Array.of(1, 0, -1, NaN), 2), null);
  assert.deepEqual(invalidLabel(Float32Array.of(1, 0, -1, Infinity), 2), { row: 1, label: 1, value: Infinity });
  assert.deepEqual(invalidLabel([0, 0.5], 2), { row: 0, label: 1, value: 0.5 });
});

test('a dataset writer refuses a label outside 1, 0, -1, blank, naming the image', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-verify-w-'));
  try {
    await mkdir(path.join(dir, 'd'));
    const w = new DatasetWriter(path.join(dir, 'd'), { height: 2, width: 2, labelSet: 'toy', labels: ['A', 'B'] });
    await assert.rejects(
      w.add('train', { image: new Uint8Array(4), labels: [1, 2], subjectId: 'p', studyId: 's', path: 'img/x.png' }),
      /img\/x\.png: label 1 is 2; labels are 1, 0, -1 or blank/,
    );
    await w.abort();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('verified data: a flipped byte in a training or test shard is refused before step 1 naming the file; a label of +Inf is refused at read naming file and row', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-verify-'));
  const log = createLogger('test', 'warn');
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 60, imageSize: 32, seed: 2, fractions: { val: 0.1, test: 0.2 } });
    const m = await readManifest(data);
    for (const split of ['train', 'test'] as const) {
      const shard = path.join(data, m.splits[split].shards[0]!.file);
      const good = await readFile(shard);
      const bad = Buffer.from(good);
      bad[Math.floor(bad.length / 2)]! ^= 0x01;
      await writeFile(shard, bad);
      const out = path.join(dir, `run-${split}`);
      await assert.rejects(
        trainDistributed(parseTrainConfig(args(data, out)), { log, progress: false, workerOutput: () => {} }),
        (e: Error) => e.message.includes(shard) && /sha256 .* differs from manifest\.json's/.test(e.message),
      );
      assert.ok(!existsSync(path.join(out, 'metrics.jsonl')), 'no step ran');
      await writeFile(shard, good);
    }

    // A label flipped to +Inf in a shard whose manifest checksum was updated to match (a bad
    // prepare, not a bad disk): the reader refuses the record batch, naming file and row.
    const file = path.join(data, m.splits.train.shards[0]!.file);
    const ds = await openDataset(data);
    const row0 = (await ds.split('train').read([0])).labels;
    await ds.close();
    const bytes = await readFile(file);
    const at = bytes.indexOf(Buffer.from(row0.buffer, row0.byteOffset, row0.byteLength));
    assert.ok(at > 0, 'row 0 labels found in the shard');
    bytes.writeFloatLE(Infinity, at);
    await writeFile(file, bytes);
    const doc = JSON.parse(await readFile(path.join(data, 'manifest.json'), 'utf8'));
    doc.splits.train.shards[0].sha256 = createHash('sha256').update(bytes).digest('hex');
    await writeFile(path.join(data, 'manifest.json'), JSON.stringify(doc));
    const again = await openDataset(data);
    try {
      await assert.rejects(
        again.split('train').read([0]),
        (e: Error) => e.message.startsWith(`${file}: row 0 (`) && /label '.*' is Infinity; labels are 1, 0, -1 or blank/.test(e.message),
      );
    } finally {
      await again.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
