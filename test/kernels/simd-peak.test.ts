import assert from 'node:assert/strict';
import { test } from 'node:test';
import { matMulFlops, simdPeak } from '../../bench/simd-peak.js';
import { assembleModule, Body, wasmApi } from '../../kernels/wasm-asm.js';

test('matMulFlops counts 2*m*n*k per matrix in all four layouts and with a batch', () => {
  // [m=3, k=5] x [k=5, n=4]; A transposed is stored [5, 3]
  assert.equal(matMulFlops([3, 5], [3, 4]), 2 * 3 * 4 * 5);
  assert.equal(matMulFlops([5, 3], [3, 4]), 2 * 3 * 4 * 5);
  assert.equal(matMulFlops([7, 3, 5], [7, 3, 4]), 7 * 2 * 3 * 4 * 5);
  assert.equal(matMulFlops([1, 3, 5], [6, 3, 4]), 6 * 2 * 3 * 4 * 5); // A broadcast over the batch
  assert.equal(matMulFlops([0, 5], [0, 4]), 0);
});

test('simdPeak measures the mul+add loop, and the FMA loop exactly where the engine compiles relaxed SIMD', () => {
  const mulAdd = simdPeak('mul-add', 5, 1);
  assert.ok(mulAdd && mulAdd.gflops > 0 && Number.isFinite(mulAdd.gflops), JSON.stringify(mulAdd));
  const probe = new Body([]);
  const v = probe.local('v128');
  probe.v128Zero().v128Zero().v128Zero().f32x4RelaxedMadd().set(v);
  const relaxed = wasmApi!.validate(assembleModule([{ name: 'f', body: probe }]));
  const fma = simdPeak('fma', 5, 1);
  assert.equal(fma !== null, relaxed);
  if (fma) assert.ok(fma.gflops > 0);
});
