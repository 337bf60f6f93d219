import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { batchChecksum } from '../../shared/batch-checksum.js';
import { AUGMENT_PRESETS } from '../../shared/augment/policy.js';
import { augmentImages } from '../../shared/augment/warp.js';
import { runJob } from '../../coordinator/job/run-job.js';
import { datasetRowSource } from '../../coordinator/data/dataset-source.js';
import { Sampler } from '../../coordinator/job/sampler.js';
import { createLogger } from '../../shared/util/log.js';
import { Prng } from '../../shared/random/generators.js';

/**
 * Augmentation on the real data path (feed, worker processes, the augmentation thread): every
 * step's slices, summed over ranks, hold exactly the pixels of the global batch's rows augmented
 * with their own (seed, epoch, row) draws, for 1 and for 4 workers alike.
 */

const S = 16;
const ROWS = 40;
const BATCH = 8;
const SEED = 3;
let dir: string;
let dataDir: string;
const log = createLogger('test', 'silent');

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'cxr-augment-'));
  dataDir = path.join(dir, 'data');
  mkdirSync(dataDir);
  const w = new DatasetWriter(dataDir, { height: S, width: S, labelSet: 'toy', labels: ['A', 'B'], rowsPerBatch: 16, batchesPerShard: 2 });
  const rng = new Prng(11);
  for (let i = 0; i < ROWS; i++)
    await w.add('train', {
      image: Uint8Array.from({ length: S * S }, () => rng.int(256)),
      labels: [i % 2, i % 3 === 0 ? 1 : 0],
      subjectId: `p${i}`,
      studyId: `s${i}`,
      path: `img/${i}.png`,
    });
  await w.finish({ createdBy: 'test', source: {} });
});

after(() => rmSync(dir, { recursive: true, force: true }));

test('--augment: each step holds its rows augmented by (seed, epoch, row), the same for 1 and 4 workers, and not the raw rows', async () => {
  const ds = await openDataset(dataDir);
  try {
    const source = datasetRowSource(ds);
    const steps = 10; // two epochs of 5
    const sampler = new Sampler({ size: ROWS, globalBatch: BATCH, seed: SEED });
    const expected: Record<string, number>[] = [];
    const raw: Record<string, number>[] = [];
    for (let s = 0; s < steps; s++) {
      const pos = sampler.positionAt(s);
      const idx = sampler.globalBatch(pos);
      const b = await ds.split('train').read(idx);
      raw.push(batchChecksum(b, idx));
      expected.push(batchChecksum({ ...b, images: augmentImages(b.images, b.n, S, AUGMENT_PRESETS.strong, SEED, pos.epoch, idx) }, idx));
    }
    for (const workers of [1, 4]) {
      const got: Record<string, number>[] = [];
      await runJob({
        workers,
        step: { name: 'checksum' },
        source,
        seed: SEED,
        globalBatch: BATCH,
        steps,
        augment: AUGMENT_PRESETS.strong,
        log,
        workerOutput: () => {},
        onStep: (s) => got.push(s.counters),
      });
      assert.equal(got.length, steps);
      got.forEach((c, s) => {
        for (const k of ['rows', 'pixels', 'index_sum', 'label_pos_pixels'] as const)
          assert.equal(c[k], expected[s]![k], `${workers} workers, step ${s}: ${k}`);
        assert.notEqual(c.pixels, raw[s]!.pixels, `step ${s} was augmented`);
      });
    }
  } finally {
    await ds.close();
  }
});
