import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../worker/backend.js';
import { mulberry32, normalSource } from '../shared/rng.js';
import type { TrainConfig } from '../coordinator/train-config.js';
import { trainDistributed } from '../coordinator/train-job.js';
import { createLogger } from '../shared/log.js';
import { syntheticData, writeDataset } from './helpers/synthetic.js';

const info = await initBackend('wasm');

const randArray = (n: number, seed: number) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r());
};

/** Run f on the wasm and the cpu backend with the same inputs; compare the outputs. */
function sameOnCpu(name: string, f: () => tf.Tensor, tol = 1e-4) {
  tf.setBackend('wasm');
  const w = f();
  const wv = w.dataSync().slice();
  const shape = w.shape;
  w.dispose();
  tf.setBackend('cpu');
  const c = f();
  const cv = c.dataSync();
  assert.deepEqual(c.shape, shape, `${name}: shape`);
  c.dispose();
  tf.setBackend('wasm');
  let maxErr = 0;
  let maxMag = 1e-6;
  cv.forEach((v, i) => {
    maxErr = Math.max(maxErr, Math.abs(v - wv[i]!));
    maxMag = Math.max(maxMag, Math.abs(v));
  });
  assert.ok(maxErr / maxMag < tol, `${name}: wasm differs from cpu by ${maxErr} (scale ${maxMag})`);
}

test('the wasm backend initialises and says why', () => {
  assert.equal(info.name, 'wasm');
  assert.match(info.reason, /wasm/);
});

test('Conv2DBackpropFilter on wasm equals the cpu kernel (strides, padding, dilation-free shapes)', () => {
  const cases: { x: [number, number, number, number]; f: [number, number, number, number]; s: number; pad: 'valid' | 'same' | number }[] = [
    { x: [2, 16, 16, 1], f: [8, 8, 1, 6], s: 8, pad: 'valid' },
    { x: [2, 9, 11, 3], f: [3, 3, 3, 4], s: 1, pad: 'same' },
    { x: [1, 10, 10, 2], f: [3, 2, 2, 5], s: 2, pad: 'same' },
    { x: [3, 7, 7, 2], f: [2, 2, 2, 3], s: 1, pad: 1 },
  ];
  cases.forEach((c, k) => {
    const xv = randArray(c.x.reduce((a, b) => a * b), 10 + k);
    const fv = randArray(c.f.reduce((a, b) => a * b), 20 + k);
    sameOnCpu(`conv case ${k}`, () =>
      tf.tidy(() => {
        const x = tf.tensor4d(xv, c.x);
        const filt = tf.tensor4d(fv, c.f);
        // The gradient of sum(conv * weights) w.r.t. the filter runs Conv2DBackpropFilter.
        const y = tf.conv2d(x, filt, c.s, c.pad);
        const wts = tf.tensor(randArray(y.size, 30 + k), y.shape);
        return tf.grad((ff: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(x, ff as tf.Tensor4D, c.s, c.pad), wts)))(filt);
      }),
    );
  });
});

test('UnsortedSegmentSum on wasm (the gradient of gather) equals the cpu kernel', () => {
  const table = randArray(7 * 5, 3);
  sameOnCpu('gather grad', () =>
    tf.tidy(() => {
      const t = tf.tensor2d(table, [7, 5]);
      const idx = tf.tensor1d([0, 3, 3, 6, 1, 3, 0], 'int32');
      const w = tf.tensor2d(randArray(7 * 5, 4), [7, 5]);
      return tf.grad((tt: tf.Tensor) => tf.sum(tf.mul(tf.gather(tt, idx), w)))(t);
    }),
  );
  sameOnCpu('unsortedSegmentSum', () => tf.unsortedSegmentSum(tf.tensor2d(table, [7, 5]), tf.tensor1d([2, 0, 2, 1, 4, 0, 2], 'int32'), 5));
});

test('transposed matMuls on wasm (explicit-transpose kernel) equal the cpu kernel', () => {
  const a = randArray(4 * 6 * 5, 5);
  const b = randArray(4 * 5 * 3, 6);
  for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    sameOnCpu(`matMul ${ta} ${tb}`, () =>
      tf.matMul(tf.tensor3d(a, ta ? [4, 5, 6] : [4, 6, 5]), tf.tensor3d(b, tb ? [4, 3, 5] : [4, 5, 3]), ta, tb),
    );
    sameOnCpu(`2-D matMul ${ta} ${tb}`, () =>
      tf.matMul(tf.tensor2d(a.subarray(0, 30), ta ? [5, 6] : [6, 5]), tf.tensor2d(b.subarray(0, 15), tb ? [3, 5] : [5, 3]), ta, tb),
    );
  }
});

test('the tiny model learns a synthetic task on wasm (test mean AUROC > 0.9)', async () => {
  const labels = ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion', 'Pneumothorax'];
  const data = syntheticData({ size: 32, labels, counts: { train: 640, val: 16, test: 200 }, seed: 3, uncertain: 0.05 });
  const out = await import('node:fs/promises').then((f) => f.mkdtemp('/tmp/cxr-learn-'));
  await writeDataset(`${out}/data`, data);
  const cfg: TrainConfig = {
    data: `${out}/data`, out, workers: 1, model: 'tiny', epochs: 3, steps: null,
    batchSize: 32, seed: 1, eval: 'test', backend: 'wasm', lr: 1e-3, warmupSteps: 10, minLrRatio: 0.1, weightDecay: 0.05, clipNorm: 1,
    head: 'text', textEmbeddings: null, wCls: 1, wCon: 0.5, wPrior: 0.1, labelPrior: 'orth', uncertainty: 'lsr-ones', uncertaintyLabel: [],
    blank: 'mask', posWeight: 'none', bootstrap: 0,
  };
  try {
    const r = await trainDistributed(cfg, { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} });
    assert.ok(r.evalReport!.mean_auroc! > 0.9, `mean AUROC ${r.evalReport!.mean_auroc}`);
  } finally {
    await import('node:fs/promises').then((f) => f.rm(cfg.out, { recursive: true, force: true }));
  }
});
