import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import { loadLabelSet } from '../shared/labels.js';
import { initBackend } from '../kernels/backend.js';
import { MODEL_PRESETS, resolveModelConfig, tokenCount } from '../model/config.js';
import { gelu, layerNorm } from '../model/layers.js';
import { wasmNormGeluActive } from '../kernels/tfjs/gelu.js';
import { withKernelOptions } from '../kernels/options.js';
import { trainingStep } from './step.js';
import { arg } from './args.js';
import { randomTensor, timeSwitched } from './switched.js';

/**
 * `npm run bench -- norm-gelu [--models tiny,small] [--batch 32] [--image 64] [--reps 20]`: on the
 * wasm backend, layerNorm at the encoder's shape [batch*tokens, width] and gelu at the MLP's
 * [batch*tokens, 4*width], forward alone and forward + backward (tf.grads with a given dy), on
 * the SIMD kernels (kernels/simd/norm-gelu.ts) next to the tfjs-kernel path they replace (the
 * reference), alternating in one run; then what one training step spends in them (layers*2 + 2
 * layerNorms and `layers` gelus of those shapes); then one training step per model under
 * tf.profile on each path: the summed kernel time and the kernels that take the most.
 */

const PATHS = [
  { name: 'tfjs', on: false },
  { name: 'simd', on: true },
] as const;

/** One step under tf.profile: total kernel ms and ms per kernel name, largest first. */
async function profileStep(step: { run(): Promise<void> }): Promise<{ total: number; top: [string, number][] }> {
  const prof = await tf.profile(() => step.run());
  const byName = new Map<string, number>();
  let total = 0;
  for (const k of prof.kernels) {
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    total += ms;
    byName.set(k.name, (byName.get(k.name) ?? 0) + ms);
  }
  return { total, top: [...byName].sort((a, b) => b[1] - a[1]) };
}

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  const batch = Number(arg(argv, 'batch', '32'));
  const image = Number(arg(argv, 'image', '64'));
  const reps = Number(arg(argv, 'reps', '20'));
  for (const m of models)
    if (!(MODEL_PRESETS as readonly string[]).includes(m))
      throw new UserError(`--models: unknown model '${m}' (known: ${MODEL_PRESETS.join(', ')})`);
  if (!(Number.isInteger(reps) && reps > 0)) throw new UserError(`--reps must be a positive integer, got '${arg(argv, 'reps', '')}'`);
  await initBackend('wasm');
  const normGelu = (on: boolean) => ({ normGelu: on });
  if (!wasmNormGeluActive()) {
    process.stdout.write('the SIMD LayerNorm/GELU kernels cannot run on this engine (no wasm SIMD): nothing to compare\n');
    return;
  }
  process.stdout.write(
    `wasm backend, median of ${reps} calls per path, paths alternating (tfjs: the tfjs-kernel path of model/layers.ts; simd: kernels/simd/norm-gelu.ts)\n`,
  );
  process.stdout.write(
    `${'model'.padEnd(6)} ${'op'.padEnd(22)} ${'pass'.padEnd(9)} ${'tfjs ms'.padStart(9)} ${'simd ms'.padStart(9)} ${'speed-up'.padStart(9)}\n`,
  );
  for (const preset of models) {
    const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
    const R = batch * tokenCount(cfg);
    const W = cfg.width;
    const x = randomTensor([R, W], 1);
    const gamma = randomTensor([W], 2);
    const beta = randomTensor([W], 3);
    const dyLn = randomTensor([R, W], 4);
    const h = randomTensor([R, 4 * W], 5);
    const dyGelu = randomTensor([R, 4 * W], 6);
    const ln = (a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => layerNorm(a as tf.Tensor2D, g as tf.Tensor1D, b as tf.Tensor1D);
    const rows = [
      {
        op: `layerNorm [${R},${W}]`,
        pass: 'forward',
        ms: timeSwitched(reps, normGelu, () => ln(x, gamma, beta)),
        perStep: 2 * cfg.layers + 2,
      },
      {
        op: `layerNorm [${R},${W}]`,
        pass: 'fwd+bwd',
        ms: timeSwitched(reps, normGelu, () => tf.grads(ln)([x, gamma, beta], dyLn)),
        perStep: 2 * cfg.layers + 2,
      },
      { op: `gelu [${R},${4 * W}]`, pass: 'forward', ms: timeSwitched(reps, normGelu, () => gelu(h)), perStep: cfg.layers },
      {
        op: `gelu [${R},${4 * W}]`,
        pass: 'fwd+bwd',
        ms: timeSwitched(reps, normGelu, () => tf.grads((a: tf.Tensor) => gelu(a))([h], dyGelu)),
        perStep: cfg.layers,
      },
    ];
    for (const r of rows) {
      process.stdout.write(
        `${preset.padEnd(6)} ${r.op.padEnd(22)} ${r.pass.padEnd(9)} ${r.ms.off.toFixed(2).padStart(9)} ${r.ms.on.toFixed(2).padStart(9)} ${(r.ms.off / r.ms.on).toFixed(1).padStart(8)}x\n`,
      );
    }
    const step = (path: 'off' | 'on') => rows.filter((r) => r.pass === 'fwd+bwd').reduce((s, r) => s + r.perStep * r.ms[path], 0);
    process.stdout.write(
      `${preset.padEnd(6)} per training step (${2 * cfg.layers + 2} layerNorm + ${cfg.layers} gelu, fwd+bwd): tfjs ${step('off').toFixed(0)} ms, simd ${step('on').toFixed(0)} ms\n`,
    );
    tf.dispose([x, gamma, beta, dyLn, h, dyGelu]);
  }
  process.stdout.write('\none training step under tf.profile (sum of kernel times; profiling adds a little to each), largest kernels\n');
  for (const preset of models) {
    const step = await trainingStep('wasm', preset, batch, image);
    try {
      await step.run(); // warm-up: kernels compiled, memory grown
      for (const p of PATHS) {
        const r = await withKernelOptions({ normGelu: p.on }, () => profileStep(step));
        const top = r.top
          .slice(0, 8)
          .map(([name, ms]) => `${name} ${ms.toFixed(0)}`)
          .join(', ');
        process.stdout.write(`${preset.padEnd(6)} ${p.name.padEnd(5)} ${r.total.toFixed(0).padStart(6)} ms: ${top}\n`);
      }
    } finally {
      step.dispose();
    }
  }
}
