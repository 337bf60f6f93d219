import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { wasmApi } from '../../kernels/wasm-asm.js';
import { initBackend } from '../../kernels/backend.js';
import { attentionHeads } from '../../model/layers.js';
import { adjacentSwap, simdTranspose } from '../../kernels/simd/transpose.js';
import { ATTENTION_HEADS_KERNELS, wasmAttentionHeadsActive } from '../../kernels/tfjs/attention-heads.js';
import { wasmTransposePath } from '../../kernels/tfjs/transpose.js';
import { withKernelOptions } from '../../kernels/options.js';
import { assertStepBitsWithSwitchesOff, kernelsOf } from '../fixtures/step-bits.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

await initBackend('wasm');

const randArray = (n: number, seed: number, scale = 1) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r() * scale);
};

const read = (ts: tf.Tensor[]) =>
  ts.map((t) => {
    const v = t.dataSync().slice();
    t.dispose();
    return v;
  });

test('adjacentSwap finds [outer, X, Y, inner] -> [outer, Y, X, inner] after merging axes that stay together, and nothing else', () => {
  assert.deepEqual(adjacentSwap([32, 65, 12, 32], [0, 2, 1, 3]), { outer: 32, x: 65, y: 12, inner: 32 });
  assert.deepEqual(adjacentSwap([32, 8, 8, 8, 8], [0, 1, 3, 2, 4]), { outer: 256, x: 8, y: 8, inner: 8 });
  assert.deepEqual(adjacentSwap([5, 3, 6], [1, 0, 2]), { outer: 1, x: 5, y: 3, inner: 6 });
  assert.deepEqual(adjacentSwap([2, 3, 4, 5, 6], [0, 3, 1, 2, 4]), { outer: 2, x: 12, y: 5, inner: 6 });
  assert.deepEqual(adjacentSwap([2, 3, 4, 5, 6], [2, 3, 0, 1, 4]), { outer: 1, x: 6, y: 20, inner: 6 });
  for (const [shape, perm] of [
    [
      [3, 4],
      [1, 0],
    ],
    [
      [2, 3, 4],
      [0, 2, 1],
    ],
    [
      [2, 3, 4, 5],
      [0, 1, 2, 3],
    ],
    [
      [2, 3, 4, 5],
      [2, 1, 0, 3],
    ],
    [
      [2, 3, 4, 5],
      [1, 0, 3, 2],
    ],
    [
      [2, 3, 4],
      [0, 1],
    ],
  ] as const) {
    assert.equal(adjacentSwap(shape, perm), null, `[${shape}] perm [${perm}]`);
  }
});

test('the row copies move rows between strided layouts, scaled in f32, and touch nothing else', () => {
  const { Memory } = wasmApi!;
  const memory = new Memory({ initial: 1 });
  const k = simdTranspose(memory)!;
  assert.notEqual(k, null);
  const f = new Float32Array(memory.buffer);
  // in: [outer 2, X 3, Y 5, inner d] at float 0; out [2, 5, 3, d] at float 4096, with guards after it.
  for (const d of [1, 3, 4, 5, 8, 9]) {
    const n = 2 * 3 * 5 * d;
    f.fill(NaN);
    f.set(randArray(n, d), 0);
    const out = 4096;
    k.rowsScaled(0, out * 4, 2, 5, 3, d, 15 * d * 4, d * 4, 5 * d * 4, 15 * d * 4, 3 * d * 4, d * 4, 0.3);
    const s = Math.fround(0.3);
    for (let o = 0; o < 2; o++) {
      for (let y = 0; y < 5; y++) {
        for (let x = 0; x < 3; x++) {
          for (let c = 0; c < d; c++) {
            const got = f[out + ((o * 5 + y) * 3 + x) * d + c]!;
            assert.equal(got, Math.fround(f[((o * 3 + x) * 5 + y) * d + c]! * s), `d ${d} (${o}, ${y}, ${x}, ${c})`);
          }
        }
      }
    }
    assert.ok(Number.isNaN(f[out + n]!) && Number.isNaN(f[out - 1]!), `d ${d}: guards`);
    // Bits move unchanged, NaN payloads included.
    const u = new Uint32Array(memory.buffer);
    u[0] = 0x7fa00001;
    k.rows(0, out * 4, 2, 5, 3, d, 15 * d * 4, d * 4, 5 * d * 4, 15 * d * 4, 3 * d * 4, d * 4);
    assert.equal(u[out], 0x7fa00001, `d ${d}: NaN payload`);
  }
  assert.equal(simdTranspose(new Memory({ initial: 1, maximum: 4, shared: true })), null);
});

// Perms and shapes: the attention's (d = 32, odd d, d not a multiple of 4), the stem's 5-D one,
// groups of several axes, and perms the rows kernel does not take (the backend's kernel runs).
const CASES: [number[], number[], 'rows' | 'backend'][] = [
  [[2, 65, 12, 32], [0, 2, 1, 3], 'rows'],
  [[3, 5, 7, 9], [0, 2, 1, 3], 'rows'],
  [[2, 3, 4, 6], [0, 2, 1, 3], 'rows'],
  [[1, 4, 3, 1], [0, 2, 1, 3], 'rows'],
  [[2, 4, 0, 5], [0, 2, 1, 3], 'rows'],
  [[2, 3, 4, 5, 3], [0, 1, 3, 2, 4], 'rows'],
  [[5, 3, 7], [1, 0, 2], 'rows'],
  [[2, 3, 4, 5, 6], [2, 3, 0, 1, 4], 'rows'],
  [[5, 7], [1, 0], 'backend'],
  [[2, 3, 5], [0, 2, 1], 'backend'],
  [[2, 3, 4, 5], [3, 1, 2, 0], 'backend'],
];

/** transpose(x, perm) and the gradient of sum(transpose(x) * w) for x, on the active backend. */
function transposeAndGrad(
  shape: number[],
  perm: number[],
  seed: number,
  dtype: 'float32' | 'int32' = 'float32',
): Float32Array[] | Int32Array[] {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf
    .tidy(() => {
      const values = randArray(n, seed, 100);
      if (dtype === 'int32') return [tf.transpose(tf.tensor(Int32Array.from(values, Math.round), shape, 'int32'), perm)];
      const x = tf.tensor(values, shape);
      const w = tf.tensor(
        randArray(n, seed + 1),
        perm.map((p) => shape[p]!),
      );
      return [tf.transpose(x, perm), ...tf.grads((a: tf.Tensor) => tf.sum(tf.mul(tf.transpose(a, perm), w)))([x])];
    })
    .map((t) => {
      const v = t.dataSync().slice();
      t.dispose();
      return v;
    }) as Float32Array[] | Int32Array[];
}

test("Transpose on wasm gives the backend's own kernel's bits, forward and gradient, and takes the rows kernel where whole rows move", () => {
  CASES.forEach(([shape, perm, path], c) => {
    for (const dtype of ['float32', 'int32'] as const) {
      assert.equal(wasmTransposePath(shape, perm, dtype), path, `[${shape}] perm [${perm}] ${dtype}`);
      const got = transposeAndGrad(shape, perm, 20 + c, dtype);
      withKernelOptions({ transpose: false }, () => {
        assert.equal(wasmTransposePath(shape, perm, dtype), 'backend');
        const want = transposeAndGrad(shape, perm, 20 + c, dtype);
        got.forEach((v, i) => assert.deepEqual(v, want[i], `[${shape}] perm [${perm}] ${dtype} ${['y', 'dx'][i]}`));
      });
    }
  });
  assert.equal(wasmTransposePath([4, 3, 2, 2], [0, 2, 1, 3], 'bool'), 'backend');
});

/** attentionHeads(x) and the gradients of sum(q*wq + k*wk + v*wv) for x on the active backend. */
function headsAndGrad(batch: number, tokens: number, heads: number, d: number, seed: number): Float32Array[] {
  const scale = d ** -0.5;
  return tf.tidy(() => {
    const x = tf.tensor2d(randArray(batch * tokens * 3 * heads * d, seed, 2), [batch * tokens, 3 * heads * d]);
    const ws = [1, 2, 3].map((i) => tf.tensor3d(randArray(batch * heads * tokens * d, seed + i), [batch * heads, tokens, d]));
    const loss = (a: tf.Tensor) => tf.addN(attentionHeads(a as tf.Tensor2D, batch, heads, scale).map((t, i) => tf.sum(tf.mul(t, ws[i]!))));
    return [...attentionHeads(x, batch, heads, scale), ...tf.grads(loss)([x])];
  }) as unknown as Float32Array[];
}

const HEAD_SHAPES: [number, number, number, number][] = [
  [2, 65, 4, 32],
  [3, 5, 3, 5],
  [1, 7, 2, 1],
  [2, 3, 1, 6],
  [2, 9, 12, 4],
];

test('the fused head split gives the bits of transpose, split and q * scale, forward and gradient, and runs instead of them', async () => {
  HEAD_SHAPES.forEach(([b, t, h, d], s) => {
    assert.ok(wasmAttentionHeadsActive());
    const fused = read(headsAndGrad(b, t, h, d, 40 + 4 * s) as unknown as tf.Tensor[]);
    const plain = withKernelOptions({ attentionHeads: false }, () => read(headsAndGrad(b, t, h, d, 40 + 4 * s) as unknown as tf.Tensor[]));
    fused.forEach((v, i) => assert.deepEqual(v, plain[i], `[${b}, ${t}, ${h}, ${d}] ${['q', 'k', 'v', 'dx'][i]}`));
  });
  const on = await kernelsOf(() => tf.dispose(headsAndGrad(2, 5, 3, 4, 1) as unknown as tf.Tensor[]));
  assert.ok(
    on.includes(ATTENTION_HEADS_KERNELS.split) &&
      on.includes(ATTENTION_HEADS_KERNELS.merge) &&
      !on.includes('Transpose') &&
      !on.includes('SplitV') &&
      !on.includes('Concat'),
    `kernels: ${on}`,
  );
  await withKernelOptions({ attentionHeads: false }, async () => {
    assert.equal(wasmAttentionHeadsActive(), false);
    const off = await kernelsOf(() => tf.dispose(headsAndGrad(2, 5, 3, 4, 1) as unknown as tf.Tensor[]));
    assert.ok(!off.includes(ATTENTION_HEADS_KERNELS.split) && off.includes('Transpose'), `kernels: ${off}`);
  });
});

test('the head split on wasm agrees with the cpu backend; cpu keeps transpose, split and multiply', () => {
  HEAD_SHAPES.forEach(([b, t, h, d], s) => {
    const got = read(headsAndGrad(b, t, h, d, 70 + 4 * s) as unknown as tf.Tensor[]);
    tf.setBackend('cpu');
    try {
      assert.equal(wasmAttentionHeadsActive(), false);
      const want = read(headsAndGrad(b, t, h, d, 70 + 4 * s) as unknown as tf.Tensor[]);
      want.forEach((w, i) => {
        for (let j = 0; j < w.length; j++)
          assert.ok(
            Math.abs(got[i]![j]! - w[j]!) <= 1e-6,
            `[${b}, ${t}, ${h}, ${d}] ${['q', 'k', 'v', 'dx'][i]}[${j}]: ${got[i]![j]} vs cpu ${w[j]}`,
          );
      });
    } finally {
      tf.setBackend('wasm');
    }
  });
  assert.throws(() => attentionHeads(tf.zeros([6, 9]) as tf.Tensor2D, 4, 1, 1), /not \[batch \* tokens, 3 \* heads \* d\]/);
});

test("a training step's gradients have the same bits with the row Transpose and the fused heads on and off, and leak no tensors", () =>
  assertStepBitsWithSwitchesOff(
    [ATTENTION_HEADS_KERNELS.split, ATTENTION_HEADS_KERNELS.merge],
    [{ transpose: false }, { attentionHeads: false }, { transpose: false, attentionHeads: false }],
  ));
