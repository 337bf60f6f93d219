import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { runSynth } from '../../coordinator/data/synth-run.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { tableFromIPC } from 'apache-arrow';

const run = promisify(execFile);

test('coordinator trains (default command), writes the run directory, and `coordinator eval` reproduces eval.json', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-cli-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 120, imageSize: 16, seed: 1, fractions: { val: 0.1, test: 0.3 } });
    const out = path.join(dir, 'run');
    const r = await run(process.execPath, [
      coordinatorEntry,
      '--workers',
      '1',
      '--data',
      data,
      '--out',
      out,
      '--model',
      'tiny',
      '--steps',
      '3',
      '--batch-size',
      '16',
      '--seed',
      '2',
      '--backend',
      'wasm',
      '--uncertainty',
      'lsr-ones',
      '--bootstrap',
      '50',
    ]);
    assert.match(r.stderr, /backend: wasm/);
    assert.match(r.stdout, /trained 3 steps/);
    const metrics = (await readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n');
    assert.equal(metrics.length, 3);
    const evalJson = JSON.parse(await readFile(path.join(out, 'eval.json'), 'utf8'));
    assert.equal(evalJson.mean_auroc_ci.length, 2);
    assert.equal(Object.keys(evalJson.ci).length, 14);
    const again = path.join(dir, 'again.json');
    await run(process.execPath, [
      coordinatorEntry,
      'eval',
      '--checkpoint',
      out,
      '--data',
      data,
      '--split',
      'test',
      '--out',
      again,
      '--backend',
      'wasm',
      '--bootstrap',
      '50',
      '--seed',
      '2',
    ]);
    assert.deepEqual(JSON.parse(await readFile(again, 'utf8')), evalJson);

    // `coordinator embed`: one L2-normalised embedding per test row, with the dataset's labels.
    const emb = path.join(dir, 'test-embeddings.arrow');
    await run(process.execPath, [
      coordinatorEntry,
      'embed',
      '--checkpoint',
      out,
      '--data',
      data,
      '--split',
      'test',
      '--out',
      emb,
      '--backend',
      'wasm',
    ]);
    const table = tableFromIPC(await readFile(emb));
    assert.equal(table.numRows, evalJson.n);
    assert.deepEqual(JSON.parse(table.schema.metadata.get('cxr.labels')!), Object.keys(evalJson.auroc));
    const ds = await openDataset(data);
    const truth = await ds.split('test').read(Array.from({ length: evalJson.n }, (_, i) => i));
    await ds.close();
    for (let i = 0; i < table.numRows; i++) {
      const row = table.get(i)!;
      const e = row.embedding.toArray() as Float32Array;
      assert.ok(Math.abs(Math.hypot(...e) - 1) < 1e-5, `row ${i} is not unit length`);
      assert.deepEqual([...(row.labels.toArray() as Float32Array)], [...truth.labels.subarray(i * 14, (i + 1) * 14)]);
      assert.equal(row.path, truth.paths[i]);
    }

    // A damaged model file is refused with the file named, and nothing is written.
    const bin = path.join(out, 'model.bin');
    const bytes = await readFile(bin);
    bytes[0] = bytes[0]! ^ 0xff;
    await writeFile(bin, bytes);
    const bad = path.join(dir, 'bad.json');
    await assert.rejects(
      run(process.execPath, [coordinatorEntry, 'eval', '--checkpoint', out, '--data', data, '--out', bad, '--backend', 'wasm']),
      (e: { code?: number; stderr?: string }) => e.code !== 0 && /model\.bin: sha256 does not match/.test(e.stderr ?? ''),
    );
    await assert.rejects(readFile(bad));
    await assert.rejects(
      run(process.execPath, [coordinatorEntry, '--data', data, '--out', out, '--steps', '1', '--batch-size', '16', '--backend', 'wasm']),
      (e: { stderr?: string }) => /already holds a run \(metrics\.jsonl\)/.test(e.stderr ?? ''),
    );
    await assert.rejects(
      run(process.execPath, [
        coordinatorEntry,
        '--data',
        data,
        '--out',
        path.join(dir, 'x'),
        '--uncertainty-label',
        'Nope=ones',
        '--backend',
        'wasm',
      ]),
      (e: { stderr?: string }) => /no label 'Nope'/.test(e.stderr ?? ''),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
