import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend } from '../../kernels/backend.js';
import { DEFAULT_KERNEL_OPTIONS, kernelOptions, setKernelOptions, withKernelOptions, type KernelOptions } from '../../kernels/options.js';
import { wasmBatchMatMulPath } from '../../kernels/tfjs/batch-mat-mul.js';
import { wasmNormGeluActive } from '../../kernels/tfjs/gelu.js';

await initBackend('wasm');

test('the kernel options start at their defaults, and the record cannot be changed in place', () => {
  assert.deepEqual(kernelOptions(), DEFAULT_KERNEL_OPTIONS);
  assert.throws(() => {
    (kernelOptions() as KernelOptions).normGelu = false;
  }, TypeError);
  assert.equal(kernelOptions().normGelu, true);
});

test('options set in a scope hold inside it and not after it, whether it returns or throws', () => {
  const seen = withKernelOptions({ matMulScope: 'none', normGelu: false }, () => {
    assert.equal(wasmBatchMatMulPath(), 'fallback');
    assert.equal(wasmNormGeluActive(), false);
    // A nested scope changes only what it names, and gives back its parent's options.
    withKernelOptions({ normGelu: true }, () => assert.deepEqual(kernelOptions(), { ...DEFAULT_KERNEL_OPTIONS, matMulScope: 'none' }));
    return kernelOptions();
  });
  assert.deepEqual(seen, { ...DEFAULT_KERNEL_OPTIONS, matMulScope: 'none', normGelu: false });
  assert.deepEqual(kernelOptions(), DEFAULT_KERNEL_OPTIONS);
  assert.throws(
    () =>
      withKernelOptions({ transpose: false }, () => {
        throw new Error('a failing assertion');
      }),
    /a failing assertion/,
  );
  assert.deepEqual(kernelOptions(), DEFAULT_KERNEL_OPTIONS);
  assert.equal(wasmBatchMatMulPath(), 'simd');
  assert.equal(wasmNormGeluActive(), true);
});

test('an asynchronous scope holds across its awaits and ends when its promise settles, resolved or rejected', async () => {
  const pending = withKernelOptions({ softmaxGrad: false }, async () => {
    await new Promise((resolve) => setImmediate(resolve));
    return kernelOptions().softmaxGrad;
  });
  assert.equal(await pending, false);
  assert.deepEqual(kernelOptions(), DEFAULT_KERNEL_OPTIONS);
  await assert.rejects(
    withKernelOptions({ adamw: false }, async () => {
      await new Promise((resolve) => setImmediate(resolve));
      throw new Error('a failing step');
    }),
    /a failing step/,
  );
  assert.deepEqual(kernelOptions(), DEFAULT_KERNEL_OPTIONS);
});

test('setKernelOptions returns the whole record it replaced, which puts everything back', () => {
  const previous = setKernelOptions({ gemmVariant: 'muladd', denseEpilogue: false });
  try {
    assert.deepEqual(previous, DEFAULT_KERNEL_OPTIONS);
    assert.equal(kernelOptions().gemmVariant, 'muladd');
    setKernelOptions({ attentionHeads: false });
    assert.deepEqual(kernelOptions(), { ...DEFAULT_KERNEL_OPTIONS, gemmVariant: 'muladd', denseEpilogue: false, attentionHeads: false });
  } finally {
    setKernelOptions(previous);
  }
  assert.deepEqual(kernelOptions(), DEFAULT_KERNEL_OPTIONS);
});
