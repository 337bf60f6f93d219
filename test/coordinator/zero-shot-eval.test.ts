import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { runSynth } from '../../coordinator/data/synth-run.js';
import { loadModelFor, loadZeroShot, scoreSplit } from '../../coordinator/eval/saved-model.js';
import type { TrainData } from '../../coordinator/train/config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { initBackend } from '../../kernels/backend.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { labelPrompts } from '../../model/vit.js';
import { promptPairs, promptSoftmax } from '../../model/zero-shot.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { sha256File } from '../../shared/interop/state-dict.js';
import { aurocReport } from '../../shared/metrics/auroc.js';
import { loadLabelSet } from '../../shared/labels.js';
import { createLogger } from '../../shared/util/log.js';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { addPretrainedText } from '../helpers/pretrained-text.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';
import { torchReference } from '../helpers/torch.js';

function coordinator(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [coordinatorEntry, ...args], { timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** Float64 log-odds s+ - s- and probabilities of the prompt softmax from unit embeddings. */
function promptReference(z: number[][], pos: number[][], neg: number[][], scale: number) {
  const unit = (v: number[]) => {
    const norm = Math.hypot(...v);
    return v.map((x) => x / norm);
  };
  const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i]!, 0);
  const odds = z.map((zi) => pos.map((p, l) => scale * (dot(unit(zi), unit(p)) - dot(unit(zi), unit(neg[l]!)))));
  return { odds, p: odds.map((row) => row.map((d) => 1 / (1 + Math.exp(-d)))) };
}

function maxDiff(got: Float32Array, want: number[][]): number {
  const L = want[0]!.length;
  return Math.max(...want.flatMap((row, i) => row.map((v, l) => Math.abs(got[i * L + l]! - v))));
}

const labels = loadLabelSet('chexpert14').labels;
const L = labels.length;
const bootstrap = { replicates: 50, seed: 1 };

/** A synthetic dataset of 32 px images, its test rows, and those images as a JSON file for the reference script. */
async function testData(dir: string) {
  const data = path.join(dir, 'data');
  await runSynth(data, false, { count: 60, imageSize: 32, seed: 3, fractions: { val: 0.1, test: 0.4 } });
  const ds = await openDataset(data);
  const td: TrainData & { close(): Promise<void> } = {
    labelNames: ds.labelNames,
    labelSet: ds.manifest.labelSet,
    imageSize: 32,
    split: (name) => ds.split(name),
    close: () => ds.close(),
  };
  const testSplit = td.split('test');
  const rows = await testSplit.read(Array.from({ length: testSplit.length }, (_, i) => i));
  const imagesFile = path.join(dir, 'images.json');
  await writeFile(
    imagesFile,
    JSON.stringify(Array.from({ length: rows.n }, (_, i) => Array.from(rows.images.subarray(i * 1024, (i + 1) * 1024)))),
  );
  return { data, td, rows, imagesFile };
}

/**
 * DIR in the real layout with both towers of `variant` (random weights), and the float64 prompt
 * softmax of PyTorch's unit embeddings of the test images and the prompts; or a reason to skip.
 */
function pretrainedWithReference(pre: string, variant: 'openai' | 'biomedclip', imagesFile: string) {
  const vision = torchReference<{ embeddings: number[][]; logit_scale: number }>('pretrained_vision.py', [pre, variant, '0', imagesFile]);
  if ('skip' in vision) return vision;
  const text = addPretrainedText(pre, variant === 'openai' ? 'clip' : 'biomedclip');
  if ('skip' in text) return text;
  const prompts = labelPrompts(labels);
  const ref = promptReference(
    vision.value.embeddings,
    prompts.slice(L, 2 * L).map((p) => text.value[p]!),
    prompts.slice(2 * L).map((p) => text.value[p]!),
    vision.value.logit_scale,
  );
  return { ref, logitScale: vision.value.logit_scale };
}

/** `eval --zero-shot --pretrained DIR` as a process; its eval.json. */
async function zeroShotEval(pre: string, data: string, out: string, replicates: number) {
  const r = await coordinator([
    'eval',
    '--zero-shot',
    '--pretrained',
    pre,
    '--data',
    data,
    '--out',
    out,
    '--backend',
    'wasm',
    '--bootstrap',
    String(replicates),
    '--seed',
    String(bootstrap.seed),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^test \(zero-shot\): n \d+, mean AUROC 0\.\d{4}/);
  return JSON.parse(await readFile(out, 'utf8'));
}

/** The probabilities on the test split by the path eval --zero-shot takes, in this process. */
async function ourProbabilities(pre: string, td: TrainData): Promise<Float32Array> {
  await initBackend('wasm');
  const zsm = await loadZeroShot({ pretrained: pre }, labels, 32);
  const pairs = await promptPairs(zsm.model, zsm.record.prompts);
  try {
    return (await scoreSplit(zsm.model, td, 'test', (z) => promptSoftmax(z, pairs))).scores;
  } finally {
    pairs.dispose();
    zsm.model.dispose();
  }
}

test('eval --zero-shot: a pretrained DIR equals the PyTorch reference, a run fine-tuned from it scores through its heads, compare and report show both', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-zero-shot-'));
  try {
    const { data, td, rows, imagesFile } = await testData(dir);
    // The real layout with both towers (open_clip's CLIP class, QuickGELU).
    const pre = path.join(dir, 'openai');
    const made = pretrainedWithReference(pre, 'openai', imagesFile);
    if ('skip' in made) return t.skip(made.skip);
    const { ref } = made;

    // (a) Straight from the directory, as a run-like folder of its own.
    const zsFile = path.join(dir, 'clip', 'eval.json');
    const zsDoc = await zeroShotEval(pre, data, zsFile, bootstrap.replicates);
    assert.equal(zsDoc.zero_shot.prompts, 'tower');
    assert.equal(zsDoc.zero_shot.weights, path.join(pre, 'open_clip_pytorch_model.bin'));
    assert.equal(zsDoc.zero_shot.sha256, await sha256File(path.join(pre, 'open_clip_pytorch_model.bin')));
    assert.ok(Math.abs(zsDoc.zero_shot.logit_scale - made.logitScale) < 1e-4);
    assert.equal(Object.keys(zsDoc.ci).length, L);
    // Its AUROC is that of the reference's scores (ranked by log-odds, the same order as p).
    const refRep = aurocReport(
      { scores: Float32Array.from(ref.odds.flat()), labels: rows.labels, n: rows.n, labelNames: labels },
      [],
      bootstrap,
    );
    for (const l of labels) assert.ok(Math.abs((zsDoc.auroc[l] ?? -1) - (refRep.auroc[l] ?? -1)) < 1e-9, l);

    // The same path in this process: each probability equals PyTorch's within 1e-5.
    const ours = await ourProbabilities(pre, td);
    await td.close();
    const diff = maxDiff(ours, ref.p);
    t.diagnostic(`zero-shot probabilities: max |ours - PyTorch| ${diff.toExponential(2)}`);
    assert.ok(diff <= 1e-5, `max difference ${diff}`);

    // A DIR without a text tower is refused, naming the weights.
    const visionOnly = path.join(dir, 'vision-only');
    torchReference('pretrained_vision.py', [visionOnly, 'openai']);
    const refused = await coordinator([
      'eval',
      '--zero-shot',
      '--pretrained',
      visionOnly,
      '--data',
      data,
      '--out',
      path.join(dir, 'x.json'),
    ]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /open_clip_pytorch_model\.bin: no text tower in the weights/);

    // (b) A run fine-tuned from DIR (frozen text tower), evaluated by its classifier and zero-shot through its heads.
    const run = path.join(dir, 'finetuned');
    await trainDistributed(
      parseTrainConfig({
        ...SMALL_RUN_FLAGS,
        workers: 1,
        data,
        out: run,
        steps: 6,
        'batch-size': 8,
        seed: 4,
        eval: 'test',
        backend: 'wasm',
        lr: 1e-3,
        'warmup-steps': 2,
        uncertainty: 'ignore',
        'pos-weight': 'none',
        gpu: false,
        prefetch: 2,
        report: false,
        'checkpoint-every': 0,
        'checkpoint-every-minutes': 0,
        'keep-checkpoints': 3,
        pretrained: pre,
      } as unknown as TrainArgs),
      { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} },
    );
    const runZsFile = path.join(run, 'zero-shot-eval.json');
    const runZs = await coordinator(['eval', '--zero-shot', '--checkpoint', run, '--data', data, '--out', runZsFile, '--backend', 'wasm']);
    assert.equal(runZs.code, 0, runZs.stderr);
    const runZsDoc = JSON.parse(await readFile(runZsFile, 'utf8'));
    assert.equal(runZsDoc.zero_shot.prompts, 'heads');
    assert.equal(runZsDoc.zero_shot.from, run);
    assert.equal(runZsDoc.zero_shot.pretrained.sha256, zsDoc.zero_shot.sha256);
    // Through the run's heads: the reference from the run's own image and Positive/Negative embeddings.
    const model = await loadModelFor(run, labels, 32);
    const z = tf.tidy(() => model.encodeImages(model.pixelsToInput(rows.images, rows.n)).arraySync());
    const te = model.encodeText();
    const scale = Math.min(Math.exp((await model.p('logit_scale').data())[0]!), 100);
    const headsRef = promptReference(z, te.positive.arraySync(), te.negative.arraySync(), scale);
    tf.dispose([te.names, te.positive, te.negative]);
    model.dispose();
    assert.ok(Math.abs(runZsDoc.zero_shot.logit_scale - scale) < 1e-4);
    const headsRep = aurocReport(
      { scores: Float32Array.from(headsRef.odds.flat()), labels: rows.labels, n: rows.n, labelNames: labels },
      [],
    );
    for (const l of labels) assert.ok(Math.abs((runZsDoc.auroc[l] ?? -1) - (headsRep.auroc[l] ?? -1)) < 1e-9, l);

    // compare: the fine-tuned run against the zero-shot folder and its own zero-shot file.
    const cmp = await coordinator(['compare', path.join(dir, 'clip'), run, '--color']);
    assert.equal(cmp.code, 0, cmp.stderr);
    assert.match(cmp.stdout, /^label\s+clip \(zero-shot\)\s+finetuned\s+diff \(pts\)/);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the ANSI colour escape is what is asserted
    assert.match(cmp.stdout, /\x1b\[3[12]m/);
    const json = JSON.parse((await coordinator(['compare', runZsFile, run, '--json'])).stdout) as {
      label: string;
      a: number | null;
      diffPoints: number | null;
      verdict: string;
    }[];
    assert.equal(json.length, L + 2);
    assert.equal(json.find((r) => r.label === 'Mean')!.a, runZsDoc.mean_auroc);
    for (const r of json)
      if (r.diffPoints !== null) assert.equal(r.verdict, r.diffPoints > 0.5 ? 'gain' : r.diffPoints < -0.5 ? 'loss' : 'same');

    // report: side by side, the zero-shot source said, differences coloured.
    const html = path.join(dir, 'report.html');
    const rep = await coordinator(['report', run, '--compare', zsFile, '--out', html]);
    assert.equal(rep.code, 0, rep.stderr);
    const page = await readFile(html, 'utf8');
    assert.match(page, /Comparison: clip \(zero-shot\) vs finetuned/);
    assert.match(page, /clip \(zero-shot\): each label scored by the softmax over its Positive\/Negative prompt similarities/);
    assert.match(page, /class="num diff (gain|loss)"/);
    const noOut = await coordinator(['report', runZsFile]);
    assert.equal(noOut.code, 2);
    assert.match(noOut.stderr, /an eval file has no run directory to write the report into; give --out/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('eval --zero-shot on a BiomedCLIP-layout DIR (timm image tower, BERT text tower): the PyTorch reference', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-zero-shot-bert-'));
  try {
    const { data, td, rows, imagesFile } = await testData(dir);
    const pre = path.join(dir, 'biomedclip');
    const made = pretrainedWithReference(pre, 'biomedclip', imagesFile);
    if ('skip' in made) return t.skip(made.skip);
    const doc = await zeroShotEval(pre, data, path.join(dir, 'zs', 'eval.json'), 0);
    assert.equal(doc.zero_shot.prompts, 'tower');
    assert.equal(doc.ci, undefined);
    const refRep = aurocReport({ scores: Float32Array.from(made.ref.odds.flat()), labels: rows.labels, n: rows.n, labelNames: labels }, []);
    for (const l of labels) assert.ok(Math.abs((doc.auroc[l] ?? -1) - (refRep.auroc[l] ?? -1)) < 1e-9, l);
    const diff = maxDiff(await ourProbabilities(pre, td), made.ref.p);
    await td.close();
    t.diagnostic(`zero-shot probabilities (BiomedCLIP layout): max |ours - PyTorch| ${diff.toExponential(2)}`);
    assert.ok(diff <= 1e-5, `max difference ${diff}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
