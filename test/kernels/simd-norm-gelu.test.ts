import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { wasmApi } from '../../kernels/wasm-asm.js';
import { initBackend } from '../../kernels/backend.js';
import { gelu, layerNorm } from '../../model/layers.js';
import { simdNormGelu, simdNormGeluSupported } from '../../kernels/simd/norm-gelu.js';
import { GELU_KERNELS, wasmNormGeluActive } from '../../kernels/tfjs/gelu.js';
import { LAYER_NORM_KERNELS } from '../../kernels/tfjs/layer-norm.js';
import { withKernelOptions } from '../../kernels/options.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

await initBackend('wasm');

const randArray = (n: number, seed: number, scale = 1, shift = 0) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r() * scale + shift);
};

/** erf in double precision: its Maclaurin series below 2.5, Lentz's continued fraction for erfc above. */
function erfReference(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = x;
    let sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
  let f = ax;
  let c = ax;
  let d = 0;
  for (let n = 1; n < 500; n++) {
    d = 1 / (ax + (n / 2) * d);
    c = ax + n / 2 / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.sign(x) * (1 - Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f);
}

test('the double-precision erf reference matches known values', () => {
  // erf(0.5), erf(1), erf(2), erf(3) to 16 digits (Abramowitz & Stegun, table 7.1).
  for (const [x, v] of [
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [2, 0.9953222650189527],
    [3, 0.9999779095030014],
  ] as const) {
    assert.ok(Math.abs(erfReference(x) - v) < 1e-14, `erf(${x}) = ${erfReference(x)}, expected ${v}`);
    assert.ok(Math.abs(erfReference(-x) + v) < 1e-14);
  }
});

test('the SIMD erf approximation is within 5e-7 of erf over [-8, 8] (fp32: ulp(1) = 6e-8), exact at 0 and +-1 far out', () => {
  assert.ok(simdNormGeluSupported, 'this Node has wasm SIMD');
  const { Memory } = wasmApi!;
  const memory = new Memory({ initial: 64 });
  const k = simdNormGelu(memory)!;
  const n = 400_003; // not a multiple of 4: the tail goes through the partial-vector path
  const f32 = new Float32Array(memory.buffer);
  for (let i = 0; i < n; i++) f32[i] = -8 + (16 * i) / (n - 1);
  f32[n - 1] = 0;
  f32[n - 2] = Number.NaN;
  const out = 4 * (n + 4);
  k.erf(0, out, n);
  const y = new Float32Array(memory.buffer, out, n);
  let maxErr = 0;
  let at = 0;
  for (let i = 0; i < n - 2; i++) {
    const err = Math.abs(y[i]! - erfReference(f32[i]!));
    if (err > maxErr) [maxErr, at] = [err, f32[i]!];
    assert.ok(y[i]! >= -1 && y[i]! <= 1, `erf(${f32[i]}) = ${y[i]} is outside [-1, 1]`);
  }
  assert.ok(maxErr < 5e-7, `max |erf error| ${maxErr} at x = ${at}`);
  assert.equal(y[n - 1], 0);
  assert.ok(Number.isNaN(y[n - 2]!));
  assert.equal(y[0], -1);
  assert.equal(y[n - 3], 1);
});

/** The values of `f` on the wasm backend (SIMD kernels on or off) and on cpu. */
function onBackends(f: () => tf.Tensor[]): { simd: Float32Array[]; tfjsWasm: Float32Array[]; cpu: Float32Array[] } {
  const values = () =>
    tf.tidy(f).map((t) => {
      const v = t.dataSync() as Float32Array;
      t.dispose();
      return Float32Array.from(v);
    });
  tf.setBackend('wasm');
  assert.ok(wasmNormGeluActive());
  const simd = values();
  const tfjsWasm = withKernelOptions({ normGelu: false }, values);
  tf.setBackend('cpu');
  assert.equal(wasmNormGeluActive(), false, 'the kernels are for the wasm backend only');
  const cpu = values();
  tf.setBackend('wasm');
  return { simd, tfjsWasm, cpu };
}

/** |got - want| <= tol * max(floor, max |want|) elementwise. */
function assertClose(name: string, got: Float32Array, want: Float32Array, tol: number, floor = 1e-6) {
  assert.equal(got.length, want.length, `${name}: length`);
  let scale = floor;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    assert.ok(err <= tol * scale, `${name}[${i}]: ${got[i]} vs cpu ${want[i]} (|diff| ${err}, scale ${scale})`);
  }
}

const LN_SHAPES: [number, number][] = [
  [7, 13],
  [33, 130],
  [5, 4],
  [3, 3],
  [2, 1],
  [1, 7],
  [65, 128],
];

test('layerNorm on the SIMD kernels: value and gradients of x, gamma, beta agree with cpu at odd shapes', () => {
  LN_SHAPES.forEach(([R, C], s) => {
    // An offset and scale away from 0/1, so mean and variance matter.
    const xv = randArray(R * C, 10 + s, 3, 2);
    const gv = randArray(C, 20 + s, 0.5, 1);
    const bv = randArray(C, 30 + s);
    const dyv = randArray(R * C, 40 + s);
    const r = onBackends(() => {
      const x = tf.tensor2d(xv, [R, C]);
      const g = tf.tensor1d(gv);
      const b = tf.tensor1d(bv);
      const ln = (a: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) => layerNorm(a as tf.Tensor2D, gg as tf.Tensor1D, bb as tf.Tensor1D);
      return [ln(x, g, b), ...tf.grads(ln)([x, g, b], tf.tensor2d(dyv, [R, C]))];
    });
    ['y', 'dx', 'dgamma', 'dbeta'].forEach((name, i) => {
      assertClose(`[${R},${C}] ${name} (simd)`, r.simd[i]!, r.cpu[i]!, 2e-5);
      assertClose(`[${R},${C}] ${name} (tfjs on wasm)`, r.tfjsWasm[i]!, r.cpu[i]!, 2e-5);
    });
  });
});

const GELU_SHAPES: number[][] = [[7, 13], [3, 5, 7], [2], [4, 4], [1, 3], [65, 512]];

test('gelu on the SIMD kernels: value and gradient agree with cpu at odd shapes, including the tails', () => {
  GELU_SHAPES.forEach((shape, s) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const xv = randArray(n, 50 + s, 3); // reaches well into both tails
    const dyv = randArray(n, 60 + s);
    const r = onBackends(() => {
      const x = tf.tensor(xv, shape);
      return [gelu(x), ...tf.grads((a: tf.Tensor) => gelu(a))([x], tf.tensor(dyv, shape))];
    });
    ['y', 'dx'].forEach((name, i) => {
      // erf errors are absolute (cpu's own is up to 1.5e-7), so the scale is at least 1.
      assertClose(`[${shape}] gelu ${name} (simd)`, r.simd[i]!, r.cpu[i]!, 2e-6, 1);
      assertClose(`[${shape}] gelu ${name} (tfjs on wasm)`, r.tfjsWasm[i]!, r.cpu[i]!, 2e-6, 1);
    });
  });
});

test('gelu and its gradient on the SIMD kernels keep a NaN input NaN, as cpu does (the clamps are pseudo-min/max with the bound second)', () => {
  const xv = Float32Array.from([NaN, 0.5, -3, NaN, 9, -9, NaN]);
  const r = onBackends(() => {
    const x = tf.tensor(xv);
    return [gelu(x), ...tf.grads((a: tf.Tensor) => gelu(a))([x], tf.onesLike(x))];
  });
  ['y', 'dx'].forEach((name, i) => {
    xv.forEach((x, j) =>
      assert.equal(Number.isNaN(r.simd[i]![j]!), Number.isNaN(x), `gelu ${name}[${j}] of ${x}: ${r.simd[i]![j]} (cpu ${r.cpu[i]![j]})`),
    );
    xv.forEach((x, j) => assert.equal(Number.isNaN(r.cpu[i]![j]!), Number.isNaN(x), `cpu gelu ${name}[${j}] of ${x}`));
  });
});

test('the SIMD layerNorm and gelu give the same bits on every run', () => {
  const run = () =>
    tf.tidy(() => {
      const x = tf.tensor2d(randArray(65 * 130, 7, 2, 1), [65, 130]);
      const g = tf.tensor1d(randArray(130, 8));
      const b = tf.tensor1d(randArray(130, 9));
      const f = (a: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) =>
        tf.sum(gelu(layerNorm(a as tf.Tensor2D, gg as tf.Tensor1D, bb as tf.Tensor1D)));
      const { value, grads } = tf.valueAndGrads(f)([x, g, b]);
      return [value, ...grads].map((t) => Buffer.from((t.dataSync() as Float32Array).buffer).toString('hex'));
    });
  const first = run();
  for (let i = 0; i < 3; i++) assert.deepEqual(run(), first);
});

test('the wasm backend runs the SIMD kernels when on and the tfjs kernels when switched off, leaking no tensors', async () => {
  const step = () => {
    const x = tf.tensor2d(randArray(9 * 13, 1), [9, 13]);
    const g = tf.ones([13]) as tf.Tensor1D;
    const b = tf.zeros([13]) as tf.Tensor1D;
    const grads = tf.grads((a: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) =>
      tf.sum(gelu(layerNorm(a as tf.Tensor2D, gg as tf.Tensor1D, bb as tf.Tensor1D))),
    )([x, g, b]);
    tf.dispose([x, g, b]);
    return grads;
  };
  const ours = [...Object.values(LAYER_NORM_KERNELS), ...Object.values(GELU_KERNELS)] as string[];
  const before = tf.memory().numTensors;
  const on = await tf.profile(() => tf.dispose(step()));
  assert.deepEqual(
    ours.filter((k) => !on.kernelNames.includes(k)),
    [],
    `kernels run: ${on.kernelNames}`,
  );
  assert.ok(!on.kernelNames.includes('Erf') && !on.kernelNames.includes('Rsqrt'), `kernels run: ${on.kernelNames}`);
  await withKernelOptions({ normGelu: false }, async () => {
    assert.equal(wasmNormGeluActive(), false);
    const off = await tf.profile(() => tf.dispose(step()));
    assert.deepEqual(
      ours.filter((k) => off.kernelNames.includes(k)),
      [],
      `kernels run: ${off.kernelNames}`,
    );
    assert.ok(off.kernelNames.includes('Erf'));
  });
  assert.equal(tf.memory().numTensors, before);
});

test('layerNorm shapes the kernel does not take (gamma broadcast from [1]) keep the tfjs path', () => {
  const x = tf.tensor2d(randArray(4 * 6, 3), [4, 6]);
  const g = tf.tensor1d([2]);
  const b = tf.tensor1d([0.5]);
  const y = layerNorm(x, g, b);
  tf.setBackend('cpu');
  const want = tf.tidy(() => layerNorm(tf.tensor2d(randArray(4 * 6, 3), [4, 6]), tf.tensor1d([2]), tf.tensor1d([0.5])).dataSync());
  tf.setBackend('wasm');
  assertClose('broadcast gamma', y.dataSync() as Float32Array, want as Float32Array, 2e-5);
  tf.dispose([x, g, b, y]);
});

test('without wasm SIMD (tfjs flag off) layerNorm and gelu keep the tfjs kernels and stay correct', () => {
  const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'wasm-no-simd.js');
  const r = spawnSync(process.execPath, [fixture, '--run'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
    normGelu: boolean;
    simdFlag: boolean;
    a: number[];
    b: number[];
    normGeluValues: number[][];
  };
  assert.equal(out.simdFlag, false);
  assert.equal(out.normGelu, false);
  tf.setBackend('cpu');
  const want = tf.tidy(() => {
    const x = tf.tensor2d(out.a.slice(0, 20), [4, 5]);
    const g = tf.tensor1d(out.b.slice(0, 5));
    const be = tf.tensor1d(out.b.slice(5, 10));
    return [
      layerNorm(x, g, be),
      ...tf.grads((u: tf.Tensor, v: tf.Tensor, w: tf.Tensor) =>
        tf.sum(tf.mul(gelu(layerNorm(u as tf.Tensor2D, v as tf.Tensor1D, w as tf.Tensor1D)), x)),
      )([x, g, be]),
    ].map((t) => Float32Array.from(t.dataSync()));
  });
  tf.setBackend('wasm');
  ['y', 'dx', 'dgamma', 'dbeta'].forEach((name, i) =>
    assertClose(`no-SIMD ${name}`, Float32Array.from(out.normGeluValues[i]!), want[i]!, 2e-5, 1),
  );
});

test("the SIMD LayerNorm/GELU kernels bind to a plain memory and refuse the threaded build's shared memory", () => {
  const { Memory } = wasmApi!;
  assert.notEqual(simdNormGelu(new Memory({ initial: 1 })), null);
  assert.equal(simdNormGelu(new Memory({ initial: 1, maximum: 4, shared: true })), null);
  assert.equal(simdNormGelu(undefined), null);
});
