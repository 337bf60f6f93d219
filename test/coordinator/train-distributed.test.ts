import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { writeReport } from '../../coordinator/report/index.js';
import { paramsSha256 } from '../../shared/params-hash.js';
import { createLogger } from '../../shared/util/log.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { evalSaved } from '../../coordinator/eval/saved-model.js';
import { openTrainData } from '../../coordinator/train/data.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const log = createLogger('test', 'warn');
const quiet = () => {};

function args(data: string, out: string, workers: number, extra: Partial<TrainArgs> = {}): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers,
    data,
    out,
    steps: 10,
    'batch-size': 16,
    seed: 3,
    eval: 'none',
    backend: 'wasm',
    lr: 3e-3,
    'warmup-steps': 2,
    uncertainty: 'lsr-ones',
    'pos-weight': 'balanced',
    gpu: false,
    prefetch: 2,
    'params-check-every': 1,
    report: false,
    ...extra,
  } as TrainArgs;
}

async function params(out: string): Promise<Float32Array> {
  const b = await readFile(path.join(out, 'model.bin'));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

test('N workers with per-worker batch b train the model 1 worker trains with batch N*b (1e-4 relative); replicas bit-identical', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-dp-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 120, imageSize: 16, seed: 1, fractions: { val: 0.1, test: 0.2 } });
    const ref = await trainDistributed(parseTrainConfig(args(data, path.join(dir, 'w1'), 1)), {
      log,
      progress: false,
      workerOutput: quiet,
    });
    const a = await params(path.join(dir, 'w1'));
    assert.equal(ref.paramsHash, paramsSha256(a));
    const lines = (await readFile(path.join(dir, 'w1', 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(lines.length, 10);
    // All three loss terms are on, so the gathered embeddings and the rank scaling are exercised.
    for (const k of ['loss_classification', 'loss_contrastive', 'loss_label_prior'])
      assert.ok(
        lines.every((l) => l[k] > 0),
        k,
      );
    const maxA = a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    // 3 workers: uneven slices of the batch (6, 5, 5) and of the parameter vector.
    for (const workers of [2, 3, 4]) {
      const out = path.join(dir, `w${workers}`);
      // params-check-every 1: the job fails at the first step whose replicas differ by one bit.
      const r = await trainDistributed(parseTrainConfig(args(data, out, workers)), { log, progress: false, workerOutput: quiet });
      const b = await params(out);
      assert.equal(r.paramsHash, paramsSha256(b), "model.bin holds the replicas' parameters");
      assert.equal(b.length, a.length);
      let maxDiff = 0;
      for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
      assert.ok(maxDiff <= 1e-4 * maxA, `${workers} workers: max |difference| ${maxDiff} vs max |parameter| ${maxA}`);
      const m = (await readFile(path.join(out, 'metrics.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      for (let s = 0; s < 10; s++)
        assert.ok(Math.abs(m[s].loss - lines[s].loss) <= 1e-4 * lines[s].loss, `step ${s + 1} loss ${m[s].loss} vs ${lines[s].loss}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('2 workers: train across an epoch boundary, evaluate per epoch and at the end, write embeddings and the report', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-dp-'));
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 100, imageSize: 16, seed: 2, fractions: { val: 0.1, test: 0.3 } });
    const out = path.join(dir, 'run');
    const cfg = parseTrainConfig(args(data, out, 2, { steps: undefined, epochs: 2, eval: 'test', bootstrap: 20, 'params-check-every': 5 }));
    const r = await trainDistributed(cfg, { log, progress: false, workerOutput: quiet });
    const metrics = (await readFile(path.join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const config = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8'));
    const perEpoch = config.resolved.stepsPerEpoch;
    assert.equal(r.steps, 2 * perEpoch);
    assert.equal(metrics.length, 2 * perEpoch);
    assert.deepEqual(
      metrics.map((l) => l.epoch),
      [...Array(perEpoch).fill(0), ...Array(perEpoch).fill(1)],
    );
    for (const k of ['time_compute_s', 'time_gather_s', 'time_reduce_s', 'time_data_wait_s', 'images_per_s', 'lr'])
      assert.ok(
        metrics.every((l) => l[k] >= 0),
        k,
      );
    const epoch0 = JSON.parse(await readFile(path.join(out, 'eval-epoch-0.json'), 'utf8'));
    assert.equal(epoch0.epoch, 0);
    assert.equal(epoch0.step, perEpoch);
    const ev = JSON.parse(await readFile(path.join(out, 'eval.json'), 'utf8'));
    assert.equal(ev.split, 'test');
    const ds = await openDataset(data);
    assert.equal(ev.n, ds.split('test').length);
    await ds.close();
    assert.deepEqual(r.evalReport, ev);
    const emb = JSON.parse(await readFile(path.join(out, 'embeddings.json'), 'utf8'));
    assert.equal(emb.labels.length, 14);
    await stat(path.join(out, 'environment.json'));
    // The distributed evaluation agrees with `coordinator eval` on the final checkpoint (one process).
    const again = await evalSaved(r.checkpoint, await openTrainData(data), 'test', 'wasm', { replicates: 20, seed: cfg.seed }, () => {});
    assert.equal(again.n, ev.n);
    for (const [label, v] of Object.entries(ev.auroc as Record<string, number | null>))
      assert.ok(v === null ? again.auroc[label] === null : Math.abs(again.auroc[label]! - v) < 1e-6, label);
    const rep = await writeReport(out);
    assert.match(await readFile(rep.html, 'utf8'), /<html/i);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
