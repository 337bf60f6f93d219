import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { resolveModelConfig, withTextHead, withVisualHead } from '../../model/config.js';
import { CxrModel, initialParams, modelLayout } from '../../model/vit.js';
import { type TextTowerShape, textTowerSpecs } from '../../model/text/tower.js';
import { computeGradients, localComm, type StepComm, type StepOptions } from '../../worker/steps/forward-backward.js';
import { packRows, splitRows } from '../../model/losses.js';
import { labelPriorTarget } from '../../model/label-prior.js';
import { adamwStep, decayMask } from '../../worker/steps/adamw.js';
import { mulberry32 } from '../../shared/random/generators.js';
import { evalSaved } from '../../coordinator/eval/saved-model.js';
import type { TrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { createLogger } from '../../shared/util/log.js';
import { syntheticData, writeDataset } from '../helpers/synthetic.js';

await initBackend('cpu');

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema', 'Pleural Effusion'];
const micro = (head: 'text' | 'linear' = 'text') =>
  resolveModelConfig({
    preset: 'tiny',
    imageSize: 16,
    labels,
    head,
    overrides: { width: 16, layers: 2, heads: 2, embedDim: 8 },
    textDim: 6,
  });

function batchOf(n: number, seed: number) {
  const r = mulberry32(seed);
  const images = Uint8Array.from({ length: n * 256 }, () => Math.floor(r() * 256));
  // Rows 0 and 3 share a label vector, so the multi-positive targets are exercised across ranks.
  const labelsArr = Float32Array.from({ length: n * 4 }, (_, _k) => [1, 0, -1, NaN, 0, 1][Math.floor(r() * 6)]!);
  labelsArr.set(labelsArr.subarray(0, 4), 12);
  return { images, labels: labelsArr };
}

const opts: StepOptions = {
  weights: { classification: 1, contrastive: 0.7, labelPrior: 0.3 },
  targets: { uncertainty: ['lsr-ones', 'ones', 'lsr-zeros', 'ignore'], blank: 'mask', seed: 5 },
  posWeight: Float32Array.from([2, 1, 1, 3]),
  priorTarget: labelPriorTarget('orth', labels, null),
};

/**
 * N in-process ranks holding rowCounts[r] rows each: their async collectives meet at a barrier
 * (gathers concatenate, reduces sum in rank order). A synchronous gather cannot wait for ranks on
 * the same thread, so `run` runs the ranks twice: the first run records what each rank
 * contributes (and gets zeros back), the second gets the rank-order concatenation of those. What a
 * rank contributes depends only on its own inputs, which the second run checks bit for bit.
 */
async function simulatedWorld<T>(rowCounts: number[], step: (comm: StepComm) => Promise<T>): Promise<T[]> {
  const world = rowCounts.length;
  let pending: { bufs: (Float32Array | null)[]; resolve: ((v: Float32Array[]) => void)[] } | null = null;
  const meet = (rank: number, buf: Float32Array) =>
    new Promise<Float32Array[]>((resolve) => {
      pending ??= { bufs: Array(world).fill(null), resolve: [] };
      pending.bufs[rank] = buf;
      pending.resolve.push(resolve);
      if (pending.bufs.every((b) => b !== null)) {
        const p = pending;
        pending = null;
        p.resolve.forEach((f) => f(p.bufs as Float32Array[]));
      }
    });
  const concat = (all: readonly Float32Array[]) => {
    const out = new Float32Array(all.reduce((a, b) => a + b.length, 0));
    let o = 0;
    for (const b of all) {
      out.set(b, o);
      o += b.length;
    }
    return out;
  };
  const recorded: Float32Array[][] = rowCounts.map(() => []);
  const comms = (replay: boolean): StepComm[] =>
    rowCounts.map((rows, rank) => {
      let call = 0;
      return {
        rank,
        world,
        rowCounts,
        allGather: async (local) => concat(await meet(rank, local)),
        allGatherSync(local) {
          const k = call++;
          if (!replay) {
            recorded[rank]![k] = local.slice();
            return new Float32Array((local.length / rows) * rowCounts.reduce((a, b) => a + b, 0));
          }
          assert.deepEqual(local, recorded[rank]![k], `rank ${rank} contributes the same to sync gather #${k} in both runs`);
          return concat(recorded.map((r) => r[k]!));
        },
        async allReduceSum(buf) {
          const all = await meet(rank, buf.slice());
          buf.fill(0);
          for (const b of all) for (let i = 0; i < buf.length; i++) buf[i]! += b[i]!;
        },
      };
    });
  await Promise.all(comms(false).map(step));
  return Promise.all(comms(true).map(step));
}

/** micro() with a small pretrained-shaped text tower in the step (--text-tower finetune). */
const withTower = (tower: TextTowerShape) => {
  const c = micro();
  // Token rows for the 12 prompts: start, two or three tokens, end, padding (ids below the vocabulary).
  const tokens = Array.from({ length: 12 }, (_, i) =>
    tower.kind === 'clip'
      ? [30, 1 + (i % 7), 2 + (i % 5), ...(i % 2 ? [3] : []), 31, ...(i % 2 ? [] : [0])]
      : [2, 5 + (i % 9), 6 + (i % 4), 3, ...(i % 3 ? [0, 0] : [7, 3]).slice(0, 2)],
  );
  return { ...c, text: { kind: 'tower' as const, dim: tower.embedDim, tower, tokens } };
};
const clipTower: TextTowerShape = {
  kind: 'clip',
  vocabSize: 32,
  contextLength: 8,
  width: 8,
  heads: 2,
  layers: 1,
  embedDim: 6,
  quickGelu: true,
  prefix: '',
};
const bertTower: TextTowerShape = {
  kind: 'bert',
  vocabSize: 20,
  contextLength: 8,
  maxPositions: 10,
  typeVocabSize: 2,
  width: 8,
  heads: 2,
  layers: 1,
  intermediate: 16,
  eps: 1e-12,
  padId: 0,
  embedDim: 6,
  pooler: 'cls_pooler',
  proj: 'mlp',
};

for (const [what, make] of [
  ['learnable prompts', () => micro()],
  ['a CLIP text tower in the step', () => withTower(clipTower)],
  ['a BERT text tower in the step', () => withTower(bertTower)],
] as const)
  test(`two simulated ranks with half batches each sum to the one-process gradient of the whole batch (${what})`, async () => {
    const cfg = make();
    const params = initialParams(cfg, 9);
    const n = 6;
    const { images, labels: lab } = batchOf(n, 1);
    const indices = [40, 41, 42, 43, 44, 45];
    const one = new CxrModel(cfg, params);
    const whole = await computeGradients(one, { n, images, labels: lab, indices, epoch: 1 }, localComm, opts);
    const replicas = [new CxrModel(cfg, params), new CxrModel(cfg, params)];
    const parts = await simulatedWorld([3, 3], (comm) => {
      const r = comm.rank;
      return computeGradients(
        replicas[r]!,
        {
          n: 3,
          images: images.subarray(r * 3 * 256, (r + 1) * 3 * 256),
          labels: lab.subarray(r * 12, (r + 1) * 12),
          indices: indices.slice(r * 3, r * 3 + 3),
          epoch: 1,
        },
        comm,
        opts,
      );
    });
    assert.deepEqual(parts[0]!.grads, parts[1]!.grads, 'every rank holds the same summed gradient');
    if (cfg.text.kind === 'tower')
      for (const s of textTowerSpecs(cfg.text.tower)) {
        const e = one.layout.entries.find((x) => x.name === s.name)!;
        assert.ok(
          whole.grads.subarray(e.offset, e.offset + e.size).some((g) => g !== 0),
          `the text tower's ${s.name} gets a gradient`,
        );
      }
    let maxErr = 0;
    let maxMag = 0;
    whole.grads.forEach((g, i) => {
      maxErr = Math.max(maxErr, Math.abs(g - parts[0]!.grads[i]!));
      maxMag = Math.max(maxMag, Math.abs(g));
    });
    const worst = one.layout.entries
      .map((e) => ({
        name: e.name,
        err: Math.max(
          ...Array.from(
            e.shape.length ? whole.grads.subarray(e.offset, e.offset + e.size) : whole.grads.subarray(e.offset, e.offset + 1),
            (g, i) => Math.abs(g - parts[0]!.grads[e.offset + i]!),
          ),
        ),
      }))
      .sort((a, b) => b.err - a.err)[0]!;
    assert.ok(maxMag > 0 && maxErr / maxMag < 1e-5, `max abs difference ${maxErr} (in ${worst.name}) vs max gradient ${maxMag}`);
    const t0 = parts[0]!.terms;
    const t1 = parts[1]!.terms;
    assert.ok(Math.abs(t0.classification + t1.classification - whole.terms.classification) < 1e-5);
    // Each rank evaluates the whole contrastive loss and reports half of it: the terms are shares that sum to the global value.
    assert.ok(Math.abs(t0.contrastive + t1.contrastive - whole.terms.contrastive) < 1e-5);
    assert.ok(Math.abs(t0.labelPrior + t1.labelPrior - whole.terms.labelPrior) < 1e-6);
    assert.ok(Math.abs(t0.total + t1.total - whole.terms.total) < 1e-5);
    [one, ...replicas].forEach((m) => m.dispose());
  });

test('hundreds of training steps leave the number of live tensors unchanged', async () => {
  for (const head of ['text', 'linear'] as const) {
    const cfg = micro(head);
    const params = initialParams(cfg, 2);
    const model = new CxrModel(cfg, params);
    const mask = decayMask(model.layout);
    const m = new Float32Array(params.length);
    const v = new Float32Array(params.length);
    const { images, labels: lab } = batchOf(6, 3);
    let after10 = 0;
    for (let s = 1; s <= 200; s++) {
      const r = await computeGradients(model, { n: 6, images, labels: lab, indices: [0, 1, 2, 3, 4, 5], epoch: 0 }, localComm, opts);
      adamwStep(
        params,
        r.grads,
        m,
        v,
        { start: 0, end: params.length },
        { lr: 1e-3, beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.1 },
        s,
        mask,
      );
      model.assignFlat(params);
      if (s === 10) after10 = tf.memory().numTensors;
    }
    assert.equal(tf.memory().numTensors, after10, `${head} head: tensors grew`);
    model.dispose();
  }
});

test('layout: open_clip names and TF layouts; vit-b16 has ViT-B/16 shapes; decay off for norms, biases, embeddings', () => {
  const cfg = resolveModelConfig({ preset: 'vit-b16', imageSize: 224, labels });
  const layout = modelLayout(cfg);
  const shape = (n: string) => layout.entries.find((e) => e.name === n)?.shape;
  assert.deepEqual(shape('visual.conv1.weight'), [16, 16, 1, 768]);
  assert.deepEqual(shape('visual.positional_embedding'), [197, 768]);
  assert.deepEqual(shape('visual.transformer.resblocks.11.attn.in_proj_weight'), [768, 2304]);
  assert.deepEqual(shape('visual.transformer.resblocks.11.mlp.c_fc.weight'), [768, 3072]);
  assert.deepEqual(shape('visual.proj'), [768, 512]);
  assert.equal(shape('visual.transformer.resblocks.12.ln_1.weight'), undefined);
  const visual = layout.entries.filter((e) => e.name.startsWith('visual.')).reduce((a, e) => a + e.size, 0);
  // open_clip ViT-B-16 visual: 86,192,640 parameters with a 3-channel stem (16*16*2*768 more than ours).
  assert.equal(visual + 16 * 16 * 2 * 768, 86_192_640);
  const decay = new Map(layout.entries.map((e) => [e.name, e.decay]));
  assert.equal(decay.get('visual.class_embedding'), false);
  assert.equal(decay.get('visual.ln_pre.weight'), false);
  assert.equal(decay.get('visual.transformer.resblocks.0.attn.in_proj_bias'), false);
  assert.equal(decay.get('visual.transformer.resblocks.0.attn.in_proj_weight'), true);
  assert.equal(decay.get('logit_scale'), false);
  assert.throws(() => resolveModelConfig({ preset: 'vit-b16', imageSize: 64, labels }), /224x224/);
});

test('a trained run writes config, metrics and eval; the saved model re-evaluates to the same AUROC', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-train-'));
  try {
    const data = syntheticData({ size: 16, labels, counts: { train: 48, val: 8, test: 24 }, seed: 2, uncertain: 0.05 });
    await writeDataset(path.join(dir, 'data'), data);
    const cfg: TrainConfig = {
      data: path.join(dir, 'data'),
      out: dir,
      workers: 1,
      model: 'tiny',
      epochs: null,
      steps: 3,
      batchSize: 16,
      seed: 1,
      eval: 'test',
      backend: 'cpu',
      lr: 1e-3,
      warmupSteps: 1,
      minLrRatio: 0.1,
      weightDecay: 0.05,
      clipNorm: 1,
      head: 'text',
      textEmbeddings: null,
      wCls: 1,
      wCon: 0.5,
      wPrior: 0.1,
      labelPrior: 'orth',
      uncertainty: 'lsr-ones',
      uncertaintyLabel: ['Edema=zeros'],
      blank: 'mask',
      posWeight: 'balanced',
      bootstrap: 20,
    };
    const r = await trainDistributed(cfg, { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} });
    const lines = (await readFile(path.join(dir, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(lines.length, 3);
    for (const k of ['step', 'epoch', 'loss', 'loss_classification', 'loss_contrastive', 'loss_label_prior', 'lr', 'images_per_s'])
      assert.ok(k in lines[0], k);
    const saved = JSON.parse(await readFile(path.join(dir, 'eval.json'), 'utf8'));
    assert.equal(saved.split, 'test');
    assert.equal(saved.n, 24);
    assert.deepEqual(Object.keys(saved.auroc), labels);
    const config = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
    assert.deepEqual(config.resolved.uncertainty, ['lsr-ones', 'lsr-ones', 'zeros', 'lsr-ones']);
    const again = await evalSaved(dir, data, 'test', 'cpu', { replicates: 20, seed: 1 }, () => {});
    assert.deepEqual(again.auroc, (r.evalReport as unknown as { auroc: unknown }).auroc);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * Reference forward of a zero-block, width-16 model on two 16x16 images, written out op by op:
 * ln_post(ln_pre([cls; patches @ W] + pos)), [2, 5, 16].
 */
function zeroBlockTokens(m: CxrModel, images: Uint8Array): tf.Tensor3D {
  const x = m.pixelsToInput(images, 2);
  const patches = tf.reshape(tf.transpose(tf.reshape(x, [2, 2, 8, 2, 8]), [0, 1, 3, 2, 4]), [8, 64]);
  const stem = tf.reshape(tf.matMul(patches, tf.reshape(m.p('visual.conv1.weight'), [64, 16])), [2, 4, 16]);
  const cls = tf.broadcastTo(tf.reshape(m.p('visual.class_embedding'), [1, 1, 16]), [2, 1, 16]);
  const tokens = tf.add(tf.concat([cls, stem], 1), m.p('visual.positional_embedding'));
  const ln = (t: tf.Tensor, g: string) => {
    const { mean, variance } = tf.moments(t, -1, true);
    return tf.add(tf.mul(tf.div(tf.sub(t, mean), tf.sqrt(tf.add(variance, 1e-5))), m.p(`${g}.weight`)), m.p(`${g}.bias`));
  };
  return ln(ln(tokens, 'visual.ln_pre'), 'visual.ln_post') as tf.Tensor3D;
}

test('avg readout is the mean of ln_post over the patch tokens; tok reads the class token; same parameters', () => {
  // Zero blocks, so the reference is short: tokens = ln_pre([cls; patches @ W] + pos).
  const shape = (pool?: 'tok' | 'avg') => {
    const c = resolveModelConfig({
      preset: 'tiny',
      imageSize: 16,
      labels,
      head: 'linear',
      overrides: { width: 16, layers: 0, heads: 2, embedDim: 8 },
    });
    if (pool) c.pool = pool;
    else delete c.pool;
    return c;
  };
  assert.equal(modelLayout(shape('tok')).total, modelLayout(shape('avg')).total);
  const params = initialParams(shape('avg'), 3);
  // Non-trivial ln_post so the reference's order (norm, then mean) matters.
  const r = mulberry32(9);
  const layout = modelLayout(shape('avg'));
  for (const e of layout.entries)
    if (e.name.startsWith('visual.ln_post')) for (let i = 0; i < e.size; i++) params[e.offset + i] = r() * 2 - 0.5;
  const images = Uint8Array.from({ length: 2 * 256 }, () => Math.floor(r() * 256));
  const out = (pool?: 'tok' | 'avg') => {
    const m = new CxrModel(shape(pool), params);
    try {
      return tf.tidy(() => m.encodeImages(m.pixelsToInput(images, 2)).arraySync());
    } finally {
      m.dispose();
    }
  };
  const ref = new CxrModel(shape('avg'), params);
  const [avgRef, tokRef] = tf.tidy(() => {
    const post = zeroBlockTokens(ref, images);
    const proj = ref.p<tf.Tensor2D>('visual.proj');
    const avg = tf.matMul(tf.mean(tf.slice(post, [0, 1, 0], [2, 4, 16]), 1) as tf.Tensor2D, proj);
    const tok = tf.matMul(tf.reshape(tf.slice(post, [0, 0, 0], [2, 1, 16]), [2, 16]) as tf.Tensor2D, proj);
    return [avg.arraySync() as number[][], tok.arraySync() as number[][]];
  });
  ref.dispose();
  const close = (a: number[][], b: number[][]) => a.every((row, i) => row.every((v, j) => Math.abs(v - b[i]![j]!) < 1e-4));
  assert.ok(close(out('avg'), avgRef), 'avg readout');
  assert.ok(close(out('tok'), tokRef), 'tok readout');
  // A model.json from before the option (no `pool`) reads the class token.
  assert.ok(close(out(), tokRef), 'missing pool means tok');
  assert.ok(!close(avgRef, tokRef));
});

test('spatial readout (the CPU presets): ln_post patch tokens reduced by one shared map, the grid mapped by a position-aware one', () => {
  const c = resolveModelConfig({
    preset: 'tiny',
    imageSize: 16,
    labels,
    head: 'linear',
    overrides: { width: 16, layers: 0, heads: 2, embedDim: 8 },
  });
  assert.equal(c.pool, 'spatial');
  const r = c.spatialRank!;
  const layout = modelLayout(c);
  const entry = (n: string) => layout.entries.find((e) => e.name === n)!;
  assert.deepEqual(entry('visual.spatial_pool.reduce.weight').shape, [16, r]);
  assert.deepEqual(entry('visual.spatial_pool.map.weight').shape, [4 * r, 16]);
  assert.equal(entry('visual.spatial_pool.map.bias').decay, false);
  const params = initialParams(c, 4);
  const rnd = mulberry32(11);
  for (const e of layout.entries)
    if (e.name.startsWith('visual.ln_post') || e.name === 'visual.spatial_pool.map.bias')
      for (let i = 0; i < e.size; i++) params[e.offset + i] = rnd() - 0.5;
  const images = Uint8Array.from({ length: 2 * 256 }, () => Math.floor(rnd() * 256));
  const m = new CxrModel(c, params);
  const [got, want] = tf.tidy(() => {
    const post = zeroBlockTokens(m, images);
    // Row b of the grid is [token 1's r features, token 2's, ...]: a token's place picks its rows of the map.
    const grid = tf.reshape(
      tf.matMul(tf.reshape(tf.slice(post, [0, 1, 0], [2, 4, 16]), [8, 16]), m.p<tf.Tensor2D>('visual.spatial_pool.reduce.weight')),
      [2, 4 * r],
    );
    const pooled = tf.add(tf.matMul(grid, m.p<tf.Tensor2D>('visual.spatial_pool.map.weight')), m.p('visual.spatial_pool.map.bias'));
    return [
      m.encodeImages(m.pixelsToInput(images, 2)).arraySync(),
      tf.matMul(pooled, m.p<tf.Tensor2D>('visual.proj')).arraySync() as number[][],
    ];
  });
  m.dispose();
  got.forEach((row, i) => row.forEach((v, j) => assert.ok(Math.abs(v - want[i]![j]!) < 1e-4, `[${i}][${j}]: ${v} vs ${want[i]![j]}`)));
  // Swapping two patches changes the embedding: the readout is not a symmetric pool.
  const swapped = images.slice();
  for (let y = 0; y < 8; y++)
    for (let x = 0; x < 8; x++) [swapped[y * 16 + x], swapped[y * 16 + x + 8]] = [images[y * 16 + x + 8]!, images[y * 16 + x]!];
  const m2 = new CxrModel(c, params);
  const moved = tf.tidy(() => m2.encodeImages(m2.pixelsToInput(swapped, 2)).arraySync());
  m2.dispose();
  assert.ok(
    moved[0]!.some((v, j) => Math.abs(v - got[0]![j]!) > 1e-3),
    'moving a patch moves the embedding',
  );
});

test('stem input: tiny standardises each image (exposure and contrast drop out); vit-b16 keeps the fixed affine map', () => {
  const tiny = resolveModelConfig({ preset: 'tiny', imageSize: 16, labels, overrides: { width: 16, layers: 1, heads: 2, embedDim: 8 } });
  const b16 = resolveModelConfig({ preset: 'vit-b16', imageSize: 224, labels });
  assert.equal(tiny.inputNorm, 'image');
  assert.equal(tiny.posInitStd, 1);
  assert.equal(b16.inputNorm, 'fixed');
  assert.equal(b16.posInitStd, undefined, "vit-b16 keeps open_clip's position-embedding init");
  const model = new CxrModel(tiny, initialParams(tiny, 0));
  const r = mulberry32(3);
  const a = Uint8Array.from({ length: 256 }, () => Math.floor(r() * 100));
  // The same picture at another gain and offset, and a blank picture.
  const images = Uint8Array.from([...a, ...a.map((p) => 2 * p + 40), ...new Uint8Array(256).fill(77)]);
  const x = model.pixelsToInput(images, 3);
  const v = x.arraySync().map((img) => img.flat());
  x.dispose();
  const mean = v[0]!.reduce((s, y) => s + y, 0) / 256;
  const variance = v[0]!.reduce((s, y) => s + (y - mean) ** 2, 0) / 256;
  assert.ok(Math.abs(mean) < 1e-5 && Math.abs(variance - 1) < 1e-3, `standardised: mean ${mean}, variance ${variance}`);
  for (let i = 0; i < 256; i++) assert.ok(Math.abs(v[0]![i]! - v[1]![i]!) < 1e-4, `pixel ${i}: ${v[0]![i]} vs ${v[1]![i]} after 2p + 40`);
  assert.ok(
    v[2]!.every((y) => y === 0),
    'a blank image maps to zeros, not NaN',
  );
  const fixed = new CxrModel({ ...tiny, inputNorm: 'fixed' }, initialParams(tiny, 0));
  const y = fixed.pixelsToInput(a, 1);
  const w = y.dataSync();
  for (let i = 0; i < 256; i++) assert.ok(Math.abs(w[i]! - (a[i]! / 255 - 0.5) / 0.25) < 1e-6);
  y.dispose();
  model.dispose();
  fixed.dispose();
});

test('packRows/splitRows: one buffer per rank carries several row-aligned parts, split back in rank order', () => {
  // Rank 0 holds 2 rows, rank 1 none, rank 2 one; parts of widths 1 and 3.
  const sizes = [2, 0, 1];
  const rank = (r: number, rows: number) => [
    Float32Array.from({ length: rows }, (_, i) => 10 * r + i),
    Float32Array.from({ length: rows * 3 }, (_, i) => 100 * r + i),
  ];
  const packed = sizes.map((n, r) => packRows(rank(r, n)));
  assert.deepEqual(Array.from(packed[0]!), [0, 1, 0, 1, 2, 3, 4, 5]);
  const all = new Float32Array(packed.reduce((a, p) => a + p.length, 0));
  packed.reduce((at, p) => {
    all.set(p, at);
    return at + p.length;
  }, 0);
  const [a, b] = splitRows(all, sizes, [1, 3]);
  assert.deepEqual(Array.from(a!), [0, 1, 20]);
  assert.deepEqual(Array.from(b!), [0, 1, 2, 3, 4, 5, 200, 201, 202]);
  assert.throws(() => splitRows(all.subarray(1), sizes, [1, 3]), /11 values for 3 rows of width 4/);
});

/** One process on the whole batch against two simulated ranks with uneven slices (4 and 2 rows): gradients within 1e-5 relative. */
async function unevenRanksMatch(cfg: ReturnType<typeof micro>, o: StepOptions, what: string, fixed?: Float32Array) {
  const params = initialParams(cfg, 11);
  const n = 6;
  const { images, labels: lab } = batchOf(n, 2);
  const indices = [7, 8, 9, 10, 11, 12];
  const batch = (r: number, k: number) => ({
    n: k,
    images: images.subarray(r * 256, (r + k) * 256),
    labels: lab.subarray(r * 4, (r + k) * 4),
    indices: indices.slice(r, r + k),
    epoch: 0,
  });
  const one = new CxrModel(cfg, params, fixed);
  const whole = await computeGradients(one, batch(0, n), localComm, o);
  const replicas = [new CxrModel(cfg, params, fixed), new CxrModel(cfg, params, fixed)];
  const parts = await simulatedWorld([4, 2], (comm) =>
    computeGradients(replicas[comm.rank]!, batch(comm.rank * 4, comm.rank ? 2 : 4), comm, o),
  );
  let maxErr = 0;
  let maxMag = 0;
  whole.grads.forEach((g, i) => {
    maxErr = Math.max(maxErr, Math.abs(g - parts[0]!.grads[i]!));
    maxMag = Math.max(maxMag, Math.abs(g));
  });
  assert.ok(maxErr / maxMag < 1e-5, `${what}: max abs difference ${maxErr} vs max gradient ${maxMag}`);
  assert.ok(Math.abs(parts[0]!.terms.total + parts[1]!.terms.total - whole.terms.total) < 1e-5, `${what}: loss shares`);
  [one, ...replicas].forEach((m) => m.dispose());
  return { whole, layout: one.layout };
}

test('--prior-scope states and all: two simulated ranks sum to the one-process gradient (1e-5 relative); the state prior reaches the prompts', async () => {
  const cfg = micro();
  const plain = await unevenRanksMatch(cfg, opts, 'names');
  for (const priorScope of ['states', 'all'] as const) {
    const { whole, layout } = await unevenRanksMatch(cfg, { ...opts, priorScope }, priorScope);
    // The prompt rows of the states ("Positive X", "Negative X") get a different gradient than under the names scope.
    const e = layout.entries.find((x) => x.name === 'text.prompt_embeddings')!;
    const L = cfg.labels.length;
    const rowsOf = (g: Float32Array) => g.subarray(e.offset + L * e.shape[1]!, e.offset + 3 * L * e.shape[1]!);
    assert.notDeepEqual(rowsOf(whole.grads), rowsOf(plain.whole.grads));
    if (priorScope === 'all') assert.ok(whole.terms.labelPrior > plain.whole.terms.labelPrior, 'all adds the state term to the names term');
  }
});

test('--text-head none and transformer (CLIP and BERT towers, trained or frozen): two simulated ranks sum to the one-process gradient (1e-5 relative)', async () => {
  // The heads other than mlp put the prompts straight into the joint space: its dimension is theirs.
  const joint = <C extends ReturnType<typeof micro>>(c: C): C => ({ ...c, embedDim: c.text.dim });
  await unevenRanksMatch(withTextHead(joint(micro()), 'none'), opts, '--text-head none, learnable prompts');
  for (const tower of [clipTower, bertTower]) {
    const trained = joint(withTower(tower));
    await unevenRanksMatch(withTextHead(trained, 'none'), opts, `--text-head none, ${tower.kind} tower`);
    await unevenRanksMatch(withTextHead(trained, 'transformer', 2), opts, `--text-head transformer, ${tower.kind} tower`);
    // A frozen tower: its prompts' last hidden states are fixed data, its readout frozen parameters.
    const frozen = { ...trained, text: { kind: 'frozen' as const, dim: tower.embedDim, tower, tokens: trained.text.tokens } };
    const r = mulberry32(8);
    const states = Float32Array.from({ length: 12 * trained.text.tokens[0]!.length * tower.width }, () => r() * 2 - 1);
    await unevenRanksMatch(withTextHead(frozen, 'transformer'), opts, `--text-head transformer, frozen ${tower.kind} tower`, states);
  }
});

test('--visual-head mlp and transformer: two simulated ranks sum to the one-process gradient (1e-5 relative)', async () => {
  for (const [kind, layers] of [
    ['mlp', 1],
    ['transformer', 2],
  ] as const)
    await unevenRanksMatch(withVisualHead(micro(), kind, layers), opts, `--visual-head ${kind}`);
});
