import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '../../kernels/backend.js';
import { broadcastBatchIndex, wasmBatchMatMulPath, wasmGemmVariant } from '../../kernels/tfjs/batch-mat-mul.js';
import { withKernelOptions } from '../../kernels/options.js';
import { Body, sleb, uleb, wasmApi } from '../../kernels/wasm-asm.js';
import { DEFAULT_BLOCKING, gemmVariants, simdGemm, simdGemmSupported, type GemmVariant } from '../../kernels/simd/gemm.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';
import type { TrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { createLogger } from '../../shared/util/log.js';
import { syntheticData, writeDataset } from '../helpers/synthetic.js';

const info = await initBackend('wasm');

const randArray = (n: number, seed: number) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r());
};

/** Run `body` once on each GEMM build this engine has (both on Node 20 with the backend's flag), then back to the default. */
function onEachBuild(body: (variant: GemmVariant) => void): void {
  assert.deepEqual(gemmVariants(), ['fma', 'muladd']);
  for (const v of gemmVariants()) {
    withKernelOptions({ gemmVariant: v }, () => {
      assert.equal(wasmGemmVariant(), v);
      body(v);
    });
  }
  assert.equal(wasmGemmVariant(), 'fma');
}

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
  assert.ok(maxErr / maxMag <= tol, `${name}: wasm differs from cpu by ${maxErr} (scale ${maxMag})`);
}

test('the wasm backend initialises and says why, and which GEMM build runs', () => {
  assert.equal(info.name, 'wasm');
  assert.match(info.reason, /wasm/);
  assert.match(info.reason, /matMul on the SIMD GEMM, FMA build/);
});

test('Conv2DBackpropFilter on wasm equals the cpu kernel (strides, padding, dilation-free shapes)', () => {
  const cases: { x: [number, number, number, number]; f: [number, number, number, number]; s: number; pad: 'valid' | 'same' | number }[] = [
    { x: [2, 16, 16, 1], f: [8, 8, 1, 6], s: 8, pad: 'valid' },
    { x: [2, 9, 11, 3], f: [3, 3, 3, 4], s: 1, pad: 'same' },
    { x: [1, 10, 10, 2], f: [3, 2, 2, 5], s: 2, pad: 'same' },
    { x: [3, 7, 7, 2], f: [2, 2, 2, 3], s: 1, pad: 1 },
  ];
  cases.forEach((c, k) => {
    const xv = randArray(
      c.x.reduce((a, b) => a * b),
      10 + k,
    );
    const fv = randArray(
      c.f.reduce((a, b) => a * b),
      20 + k,
    );
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

test('UnsortedSegmentSum on wasm (the gradient of gather) equals the cpu kernel, to the bit', () => {
  const table = randArray(7 * 5, 3);
  sameOnCpu(
    'gather grad',
    () =>
      tf.tidy(() => {
        const t = tf.tensor2d(table, [7, 5]);
        const idx = tf.tensor1d([0, 3, 3, 6, 1, 3, 0], 'int32');
        const w = tf.tensor2d(randArray(7 * 5, 4), [7, 5]);
        return tf.grad((tt: tf.Tensor) => tf.sum(tf.mul(tf.gather(tt, idx), w)))(t);
      }),
    0,
  );
  sameOnCpu(
    'unsortedSegmentSum',
    () => tf.unsortedSegmentSum(tf.tensor2d(table, [7, 5]), tf.tensor1d([2, 0, 2, 1, 4, 0, 2], 'int32'), 5),
    0,
  );
});

test('transposed matMuls on wasm (explicit-transpose kernel) equal the cpu kernel', () => {
  const a = randArray(4 * 6 * 5, 5);
  const b = randArray(4 * 5 * 3, 6);
  for (const [ta, tb] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ] as const) {
    sameOnCpu(`matMul ${ta} ${tb}`, () =>
      tf.matMul(tf.tensor3d(a, ta ? [4, 5, 6] : [4, 6, 5]), tf.tensor3d(b, tb ? [4, 3, 5] : [4, 5, 3]), ta, tb),
    );
    sameOnCpu(`2-D matMul ${ta} ${tb}`, () =>
      tf.matMul(tf.tensor2d(a.subarray(0, 30), ta ? [5, 6] : [6, 5]), tf.tensor2d(b.subarray(0, 15), tb ? [3, 5] : [5, 3]), ta, tb),
    );
  }
});

test('batched matMul on wasm takes the SIMD GEMM and equals the cpu kernel: odd sizes, batch 1..N, all four layouts, both builds', () => {
  // Node 20 has wasm SIMD: the fast path must be the one tested here, not the fallback.
  assert.equal(wasmBatchMatMulPath(), 'simd');
  onEachBuild((variant) => {
    const r = mulberry32(7);
    const dim = () => 1 + Math.floor(r() * 19);
    const shapes: [number, number, number, number][] = [
      [2, 65, 65, 32], // the tiny model's attention products
      [3, 65, 32, 65],
      [5, 1, 1, 1],
      [2, 4, 8, 3], // exactly one register block
      [3, 5, 9, 0], // empty inner dimension: zeros
      ...Array.from({ length: 8 }, (): [number, number, number, number] => [1 + Math.floor(r() * 6), dim(), dim(), dim()]),
    ];
    shapes.forEach(([batch, m, n, k], s) => {
      for (const [ta, tb] of [
        [false, false],
        [true, false],
        [false, true],
        [true, true],
      ] as const) {
        const av = randArray(batch * m * k, 100 + s);
        const bv = randArray(batch * k * n, 200 + s);
        sameOnCpu(`${variant} [${batch}] ${m}x${k} . ${k}x${n} ${ta} ${tb}`, () =>
          tf.matMul(tf.tensor3d(av, ta ? [batch, k, m] : [batch, m, k]), tf.tensor3d(bv, tb ? [batch, n, k] : [batch, k, n]), ta, tb),
        );
      }
    });
  });
});

test('dense (batch-1) matMuls on the SIMD GEMM equal the cpu kernel with k and m cut into blocks: default blocks, tiny blocks, both builds', () => {
  // 2080 x 300 x 41 crosses the default k block (256) and m block; kc 7 / mc 5 crosses many.
  const [m, n, k] = [2080, 41, 300];
  const av = randArray(m * k, 51);
  const bv = randArray(k * n, 52);
  onEachBuild((variant) => {
    for (const blocking of [undefined, { kc: 7, mc: 5 }]) {
      withKernelOptions({ gemmBlocking: blocking ?? DEFAULT_BLOCKING }, () => {
        for (const [ta, tb] of [
          [false, false],
          [true, false],
          [false, true],
          [true, true],
        ] as const) {
          sameOnCpu(`${variant} ${m}x${k} . ${k}x${n} ${ta} ${tb} ${blocking ? 'small blocks' : 'default blocks'}`, () =>
            tf.matMul(tf.tensor2d(av, ta ? [k, m] : [m, k]), tf.tensor2d(bv, tb ? [n, k] : [k, n]), ta, tb),
          );
        }
      });
    }
  });
});

test('the SIMD GEMM scope switch: batch-1 products on it (scope all, the default) and on XNNPACK (batched) equal the cpu kernel; none routes around it', () => {
  // 37 x 41 x 29: full 4x8 panels (the contiguous packing) and ragged edges in every layout.
  const [m, n, k] = [37, 41, 29];
  const av = randArray(m * k, 41);
  const bv = randArray(k * n, 42);
  for (const [ta, tb] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ] as const) {
    for (const s of ['all', 'batched'] as const) {
      withKernelOptions({ matMulScope: s }, () =>
        sameOnCpu(`2-D ${ta} ${tb} ${s}`, () =>
          tf.matMul(tf.tensor2d(av, ta ? [k, m] : [m, k]), tf.tensor2d(bv, tb ? [n, k] : [k, n]), ta, tb),
        ),
      );
    }
  }
  withKernelOptions({ matMulScope: 'none' }, () => {
    assert.equal(wasmBatchMatMulPath(), 'fallback');
    sameOnCpu('batched on the backend kernel', () =>
      tf.matMul(tf.tensor3d(av.subarray(0, 3 * 4 * 5), [3, 4, 5]), tf.tensor3d(bv.subarray(0, 3 * 5 * 6), [3, 5, 6])),
    );
  });
  assert.equal(wasmBatchMatMulPath(), 'simd');
});

test('batched matMul on wasm broadcasts batch dims like NumPy', () => {
  const a = randArray(2 * 1 * 5 * 3, 11);
  const b = randArray(1 * 4 * 3 * 6, 12);
  // The reference repeats the operands explicitly, so it does not depend on any kernel's broadcasting.
  sameOnCpu('[2,1] x [1,4]', () => {
    if (tf.getBackend() === 'wasm') return tf.matMul(tf.tensor4d(a, [2, 1, 5, 3]), tf.tensor4d(b, [1, 4, 3, 6]));
    return tf.matMul(tf.tile(tf.tensor4d(a, [2, 1, 5, 3]), [1, 4, 1, 1]), tf.tile(tf.tensor4d(b, [1, 4, 3, 6]), [2, 1, 1, 1]));
  });
  sameOnCpu('[3] x 2-D', () =>
    tf.matMul(tf.tensor3d(a.subarray(0, 3 * 2 * 5), [3, 2, 5]), tf.tensor2d(b.subarray(0, 5 * 6), [6, 5]), false, true),
  );
  sameOnCpu('[1] x [4]', () => tf.matMul(tf.tensor3d(a.subarray(0, 15), [1, 3, 5]), tf.tensor3d(b.subarray(0, 4 * 5 * 2), [4, 5, 2])));
  assert.deepEqual([...broadcastBatchIndex([2, 4], [1, 4])], [0, 1, 2, 3, 0, 1, 2, 3]);
  assert.deepEqual([...broadcastBatchIndex([2, 3], [2, 1])], [0, 0, 0, 1, 1, 1]);
  assert.deepEqual([...broadcastBatchIndex([2, 3], [3])], [0, 1, 2, 0, 1, 2]);
  assert.deepEqual([...broadcastBatchIndex([2, 3], [])], [0, 0, 0, 0, 0, 0]);
});

test('batched matMul on wasm gives the same bits every run, whatever the batch order', () => {
  const [batch, m, n, k] = [6, 13, 11, 9];
  const av = randArray(batch * m * k, 21);
  const bv = randArray(batch * n * k, 22);
  const once = () =>
    tf.tidy(() =>
      tf
        .matMul(tf.tensor3d(av, [batch, k, m]), tf.tensor3d(bv, [batch, n, k]), true, true)
        .dataSync()
        .slice(),
    );
  const first = once();
  assert.deepEqual(once(), first);
  // Each matrix is its own fixed-order sum: reversing the batch only reverses the results.
  const rev = tf.tidy(() => {
    const A = tf.reverse(tf.tensor3d(av, [batch, k, m]), 0);
    const B = tf.reverse(tf.tensor3d(bv, [batch, n, k]), 0);
    return tf
      .reverse(tf.matMul(A, B, true, true), 0)
      .dataSync()
      .slice();
  });
  assert.deepEqual(rev, first);
});

test('attention gradients through the SIMD batched matMul equal the cpu backend, both builds', () => {
  const [bh, t, d] = [6, 7, 5];
  const qv = randArray(bh * t * d, 31);
  const kv = randArray(bh * t * d, 32);
  const vv = randArray(bh * t * d, 33);
  const wv = randArray(bh * t * d, 34);
  const attention = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) =>
    tf.sum(tf.mul(tf.matMul(tf.softmax(tf.matMul(tf.mul(q, d ** -0.5), k, false, true)), v), tf.tensor3d(wv, [bh, t, d])));
  onEachBuild((variant) => {
    for (let which = 0; which < 3; which++) {
      sameOnCpu(`${variant} d/d${'qkv'[which]}`, () =>
        tf.tidy(() => {
          const args = [qv, kv, vv].map((x) => tf.tensor3d(x, [bh, t, d]));
          return tf.grads(attention)(args)[which]!;
        }),
      );
    }
  });
});

test('without wasm SIMD (tfjs flag off) batched matMul falls back to the backend kernel and stays correct', () => {
  const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'wasm-no-simd.js');
  const r = spawnSync(process.execPath, [fixture, '--run'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
    path: string;
    simdFlag: boolean;
    values: number[];
    a: number[];
    b: number[];
  };
  assert.equal(out.simdFlag, false);
  assert.equal(out.path, 'fallback');
  tf.setBackend('cpu');
  const want = tf.tidy(() => tf.matMul(tf.tensor3d(out.a, [3, 4, 5]), tf.tensor3d(out.b, [3, 6, 5]), false, true).dataSync());
  tf.setBackend('wasm');
  want.forEach((w, i) => assert.ok(Math.abs(w - out.values[i]!) < 1e-4, `element ${i}: ${out.values[i]} vs ${w}`));
});

test("the SIMD GEMM binds to a plain memory and refuses what it cannot import (the threaded build's shared memory)", () => {
  const { Memory } = wasmApi!;
  assert.equal(simdGemmSupported, true);
  assert.equal(simdGemm(new Memory({ initial: 1 }))?.variant, 'fma');
  for (const v of gemmVariants()) {
    assert.equal(simdGemm(new Memory({ initial: 1 }), v)?.variant, v);
    assert.equal(simdGemm(new Memory({ initial: 1, maximum: 4, shared: true }), v), null);
    assert.equal(simdGemm(undefined, v), null);
  }
});

test("Identity on wasm shares its input's data (no copy) and stays correct when either side is disposed or the input is replaced", () => {
  tf.setBackend('wasm');
  const before = tf.memory();
  const x = tf.tensor2d(randArray(4000, 5), [40, 100]);
  const buffers = tf.memory().numDataBuffers;
  const y = tf.clone(x); // Identity
  assert.equal(tf.memory().numDataBuffers, buffers, 'a clone takes no new buffer');
  const want = x.dataSync().slice();
  x.dispose();
  assert.deepEqual(y.dataSync(), want, 'the clone keeps the data after the input is gone');
  const init = tf.tensor1d([1, 2, 3]);
  const next = tf.tensor1d([7, 8, 9]);
  const v = tf.variable(init);
  const saved = tf.clone(v);
  v.assign(next);
  assert.deepEqual([...saved.dataSync()], [1, 2, 3], 'assigning a variable does not change an earlier clone of it');
  // A custom gradient saves its inputs through Identity: values and gradients stay those of cpu.
  sameOnCpu('customGrad through Identity', () =>
    tf.tidy(() => {
      const f = tf.customGrad((aIn, saveIn) => {
        const a = aIn as tf.Tensor;
        (saveIn as tf.GradSaveFunc)([a]);
        return { value: tf.mul(a, a), gradFunc: (dy: tf.Tensor, [s]: tf.Tensor[]) => tf.mul(dy, tf.mul(s!, 2)) };
      });
      return tf.grad((a: tf.Tensor) => tf.sum(f(a) as tf.Tensor))(tf.tensor1d(randArray(257, 6)));
    }),
  );
  for (const t of [y, v, saved, init, next]) t.dispose();
  assert.equal(tf.memory().numTensors, before.numTensors, 'no tensor leaked');
  assert.equal(tf.memory().numDataBuffers, before.numDataBuffers, 'no buffer leaked');
});

test('the wasm assembler encodes LEB128 immediates and the relaxed-SIMD opcode', () => {
  // f32x4.relaxed_madd is 0xfd then opcode 0x105 as a LEB128: 0x85 0x02.
  assert.deepEqual(new Body([]).f32x4RelaxedMadd().code, [0xfd, 0x85, 0x02]);
  assert.deepEqual(uleb(0), [0]);
  assert.deepEqual(uleb(127), [0x7f]);
  assert.deepEqual(uleb(128), [0x80, 0x01]);
  assert.deepEqual(uleb(228), [0xe4, 0x01]);
  assert.deepEqual(uleb(0xffffffff), [0xff, 0xff, 0xff, 0xff, 0x0f]);
  assert.deepEqual(sleb(0), [0]);
  assert.deepEqual(sleb(63), [0x3f]);
  assert.deepEqual(sleb(64), [0xc0, 0x00]);
  assert.deepEqual(sleb(-1), [0x7f]);
  assert.deepEqual(sleb(-64), [0x40]);
  assert.deepEqual(sleb(-65), [0xbf, 0x7f]);
  assert.throws(() => uleb(-1), RangeError);
  assert.throws(() => sleb(2 ** 31), RangeError);
});

test('the tiny model learns a synthetic task on wasm (test mean AUROC > 0.9)', async () => {
  const labels = ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion', 'Pneumothorax'];
  const data = syntheticData({ size: 32, labels, counts: { train: 640, val: 16, test: 200 }, seed: 3, uncertain: 0.05 });
  const out = await import('node:fs/promises').then((f) => f.mkdtemp('/tmp/cxr-learn-'));
  await writeDataset(`${out}/data`, data);
  const cfg: TrainConfig = {
    data: `${out}/data`,
    out,
    workers: 1,
    model: 'tiny',
    epochs: 3,
    steps: null,
    batchSize: 32,
    seed: 1,
    eval: 'test',
    backend: 'wasm',
    lr: 1e-3,
    warmupSteps: 10,
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
    uncertaintyLabel: [],
    blank: 'mask',
    posWeight: 'none',
    bootstrap: 0,
  };
  try {
    const r = await trainDistributed(cfg, { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} });
    assert.ok(r.evalReport!.mean_auroc! > 0.9, `mean AUROC ${r.evalReport!.mean_auroc}`);
  } finally {
    await import('node:fs/promises').then((f) => f.rm(cfg.out, { recursive: true, force: true }));
  }
});
