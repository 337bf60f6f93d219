import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../kernels/backend.js';
import { resolveModelConfig } from '../../model/config.js';
import { labelPriorTarget } from '../../model/label-prior.js';
import { scoreRows } from '../../model/predict.js';
import { CxrModel, initialParams } from '../../model/vit.js';
import { computeGradients, localComm, type StepOptions } from '../../worker/steps/forward-backward.js';
import { mulberry32 } from '../../shared/random/generators.js';
import { relativeDifference, webGpuMissing } from '../helpers/webgpu.js';

/**
 * The model on WebGPU (the software adapter here and in CI) against the cpu backend: the same
 * forward, the same gradient of the whole loss, the same scores, to 1e-4 relative.
 */
const missing = await webGpuMissing();

const labels = ['Atelectasis', 'Cardiomegaly', 'Edema', 'Pleural Effusion'];
const cfg = resolveModelConfig({
  preset: 'tiny',
  imageSize: 16,
  labels,
  head: 'text',
  overrides: { width: 16, layers: 2, heads: 2, embedDim: 8 },
  textDim: 6,
});
const opts: StepOptions = {
  weights: { classification: 1, contrastive: 0.7, labelPrior: 0.3 },
  targets: { uncertainty: ['lsr-ones', 'ones', 'lsr-zeros', 'ignore'], blank: 'mask', seed: 5 },
  posWeight: Float32Array.from([2, 1, 1, 3]),
  priorTarget: labelPriorTarget('orth', labels, null),
};
const n = 6;
const r = mulberry32(3);
const batch = {
  n,
  images: Uint8Array.from({ length: n * 256 }, () => Math.floor(r() * 256)),
  labels: Float32Array.from({ length: n * 4 }, () => [1, 0, -1, NaN, 0, 1][Math.floor(r() * 6)]!),
  indices: Array.from({ length: n }, (_, i) => i),
  epoch: 0,
};

/** Everything the comparison needs from one backend, the same model and batch each time. */
async function outputs(backend: 'cpu' | 'webgpu-software') {
  await initBackend(backend);
  const model = new CxrModel(cfg, initialParams(cfg, 1));
  try {
    const z = tf.tidy(() => model.encodeImages(model.pixelsToInput(batch.images, n)));
    const embeddings = (await z.data()) as Float32Array;
    z.dispose();
    const step = await computeGradients(model, batch, localComm, opts);
    const px = cfg.imageSize ** 2;
    const rows = {
      read: async (idx: ArrayLike<number>) => ({
        n: idx.length,
        images: batch.images.subarray(idx[0]! * px, (idx[0]! + idx.length) * px),
        labels: batch.labels.subarray(idx[0]! * 4, (idx[0]! + idx.length) * 4),
      }),
    };
    const scores = (await scoreRows(model, rows, { start: 0, end: n }, { chunk: 4, scores: true, embeddings: false })).scores!;
    // One upload and one read-back of the whole vector round-trip its bits.
    const next = initialParams(cfg, 2);
    const before = tf.memory().numTensors;
    model.assignFlat(next);
    assert.deepEqual(await model.readFlat(), next, `${backend}: assignFlat then readFlat`);
    assert.equal(tf.memory().numTensors, before, `${backend}: assignFlat leaks no tensor`);
    return { embeddings, grads: step.grads, terms: step.terms, scores };
  } finally {
    model.dispose();
  }
}

test("WebGPU (software adapter): forward, loss terms, gradients and scores of the tiny model equal the cpu backend's (1e-4 relative)", {
  skip: missing ?? false,
}, async () => {
  const cpu = await outputs('cpu');
  const gpu = await outputs('webgpu-software');
  assert.equal(tf.getBackend(), 'webgpu');
  for (const k of ['embeddings', 'grads', 'scores'] as const) {
    const d = relativeDifference(gpu[k], cpu[k]);
    assert.ok(d < 1e-4, `${k}: relative difference ${d}`);
  }
  for (const k of ['classification', 'contrastive', 'labelPrior', 'total'] as const)
    assert.ok(Math.abs(gpu.terms[k] - cpu.terms[k]) <= 1e-4 * Math.abs(cpu.terms[k]), `${k}: ${gpu.terms[k]} vs ${cpu.terms[k]}`);
});

test('--backend webgpu without an adapter: one clear error naming the Vulkan loader, the ICD files and the fix', () => {
  const script = `import('${new URL('../../kernels/backend.js', import.meta.url).href}').then((b) => b.initBackend('webgpu')).then(() => process.exit(0), (e) => { console.log(e.message); process.exit(2); })`;
  let out = '';
  try {
    execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, VK_DRIVER_FILES: '/nonexistent/icd.json', VK_ICD_FILENAMES: '/nonexistent/icd.json' },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    assert.fail('initBackend(webgpu) succeeded with no Vulkan driver');
  } catch (e) {
    out = String((e as { stdout?: string }).stdout ?? '');
  }
  assert.match(out, /--backend webgpu: no WebGPU adapter/);
  assert.match(out, /libvulkan\.so\.1/);
  assert.match(out, /\/usr\/share\/vulkan\/icd\.d and \/etc\/vulkan\/icd\.d/);
  assert.match(out, /VK_DRIVER_FILES=\/nonexistent\/icd\.json/);
  assert.match(out, /mesa-vulkan-drivers/);
});
