import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

await initBackend('wasm');

const randArray = (n: number, seed: number) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r());
};

/** Column sums in increasing row order, rounding to f32 after every add: the order the kernel documents. */
function colsumReference(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(cols);
  for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let i = 0; i < rows; i++) s = Math.fround(s + x[i * cols + j]!);
    out[j] = s;
  }
  return out;
}

test('Sum over leading axes on wasm: the same bits as the backend summing the transposed rows, and as increasing-row f32 sums', () => {
  tf.setBackend('wasm');
  const cases: { shape: number[]; axis: number[] }[] = [
    { shape: [2080, 512], axis: [0] },
    { shape: [65, 37], axis: [0] }, // a block of 32, then 4 columns... 37 = 32 + 4 + 1
    { shape: [7, 3], axis: [0] }, // single columns only
    { shape: [1, 70], axis: [0] },
    { shape: [4, 5, 6], axis: [0, 1] },
    { shape: [4, 5, 6], axis: [1, 0] },
    { shape: [3, 2, 40], axis: [-3] },
  ];
  cases.forEach((c, k) => {
    const n = c.shape.reduce((a, b) => a * b, 1);
    const xv = randArray(n, 100 + k);
    const x = tf.tensor(xv, c.shape);
    const lead = c.axis.length;
    const rows = c.shape.slice(0, lead).reduce((a, b) => a * b, 1);
    const cols = n / rows;
    const ours = tf.sum(x, c.axis);
    assert.deepEqual(ours.shape, c.shape.slice(lead), `${c.shape} axis ${c.axis}: shape`);
    // The backend's own kernel takes an innermost reduction; the transposed matrix's rows are our columns.
    const theirs = tf.sum(tf.transpose(x.reshape([rows, cols])), 1);
    assert.deepEqual(
      Array.from(ours.dataSync()),
      Array.from(theirs.dataSync()),
      `${c.shape} axis ${c.axis}: bits differ from the backend's Sum`,
    );
    assert.deepEqual(Array.from(ours.dataSync()), Array.from(colsumReference(xv, rows, cols)), `${c.shape} axis ${c.axis}: order`);
    const kept = tf.sum(x, c.axis, true);
    assert.deepEqual(kept.shape, [...c.axis.map(() => 1), ...c.shape.slice(lead)]);
    tf.dispose([x, ours, theirs, kept]);
  });
});

test('Sum over other axes, of int32, of everything and of empty inputs keeps its meaning on wasm', () => {
  tf.setBackend('wasm');
  const x = tf.tensor(randArray(60, 7), [3, 4, 5]);
  const close = (a: tf.Tensor, b: number[]) =>
    Array.from(a.dataSync()).forEach((v, i) => assert.ok(Math.abs(v - b[i]!) < 1e-4, `${v} vs ${b[i]}`));
  const xs = Array.from(x.dataSync());
  const at = (i: number, j: number, k: number) => xs[i * 20 + j * 5 + k]!;
  // Axis 1 alone is not a leading axis: the backend's kernel.
  close(
    tf.sum(x, 1),
    Array.from({ length: 15 }, (_, t) => [0, 1, 2, 3].reduce((s, j) => s + at(Math.floor(t / 5), j, t % 5), 0)),
  );
  close(tf.sum(x), [xs.reduce((a, b) => a + b, 0)]);
  const xi = tf.tensor(
    [
      [1, 2],
      [3, 4],
      [5, 6],
    ],
    [3, 2],
    'int32',
  );
  const si = tf.sum(xi, 0);
  assert.equal(si.dtype, 'int32');
  assert.deepEqual(Array.from(si.dataSync()), [9, 12]);
  const empty = tf.sum(tf.zeros([0, 3]), 0);
  assert.deepEqual(Array.from(empty.dataSync()), [0, 0, 0]);
  tf.dispose([x, xi, si, empty]);
});

test('SplitV on wasm gives the slices, for every axis, uneven sizes, int32 and bool, and leaks nothing', () => {
  tf.setBackend('wasm');
  const before = tf.memory().numTensors;
  const cases: { shape: number[]; sizes: number[] | number; axis: number; dtype: 'float32' | 'int32' | 'bool' }[] = [
    { shape: [32, 12, 65, 32], sizes: 3, axis: 1, dtype: 'float32' },
    { shape: [5, 7], sizes: [2, 0, 5], axis: 1, dtype: 'float32' },
    { shape: [5, 7], sizes: [1, 4], axis: 0, dtype: 'int32' },
    { shape: [2, 3, 4], sizes: [3, -1], axis: -1, dtype: 'bool' },
    { shape: [0, 6], sizes: 2, axis: 1, dtype: 'float32' },
  ];
  cases.forEach((c, k) => {
    const n = c.shape.reduce((a, b) => a * b, 1);
    const vals = randArray(n, 200 + k).map((v) => (c.dtype === 'float32' ? v : c.dtype === 'int32' ? Math.round(v * 100) : v > 0 ? 1 : 0));
    const x = tf.tensor(vals, c.shape, c.dtype);
    const pieces = tf.split(x, c.sizes, c.axis);
    const ax = c.axis < 0 ? c.axis + c.shape.length : c.axis;
    let begin = 0;
    for (const p of pieces) {
      assert.equal(p.dtype, c.dtype);
      const size = c.shape.map((d, i) => (i === ax ? p.shape[ax]! : d));
      const expected = tf.slice(
        x,
        c.shape.map((_, i) => (i === ax ? begin : 0)),
        size,
      );
      assert.deepEqual(p.shape, size);
      assert.deepEqual(
        Array.from(p.dataSync()),
        Array.from(expected.dataSync()),
        `${c.shape} split ${JSON.stringify(c.sizes)} on ${c.axis}`,
      );
      begin += p.shape[ax]!;
      expected.dispose();
    }
    tf.dispose([x, ...pieces]);
  });
  assert.equal(tf.memory().numTensors, before);
});
