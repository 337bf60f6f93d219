import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import { loadLabelSet } from '../shared/labels.js';
import { initBackend } from '../kernels/backend.js';
import { MODEL_PRESETS, resolveModelConfig, tokenCount } from '../model/config.js';
import { dense, residualMlp } from '../model/layers.js';
import { wasmDenseActive } from '../kernels/tfjs/dense.js';
import { arg } from './args.js';
import { randomTensor, timeSwitched } from './switched.js';

/**
 * `npm run bench -- dense [--models tiny,small] [--batch 32] [--image 64] [--reps 15]`: on the wasm
 * backend, a ViT block's dense layers at the encoder's shapes ([batch*tokens, width] in), forward
 * alone and forward + backward (tf.grads with a given dy): qkv (x W + b), out_proj (+ residual)
 * and the MLP (c_fc with GELU, c_proj + residual: residualMlp), with the bias, GELU and residual
 * in the SIMD GEMM's epilogue (kernels/simd/gemm.ts) next to the separate matMul, Add, GELU and
 * Multiply kernels they replace (the reference), alternating call by call in one run.
 */

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  const batch = Number(arg(argv, 'batch', '32'));
  const image = Number(arg(argv, 'image', '64'));
  const reps = Number(arg(argv, 'reps', '15'));
  for (const m of models)
    if (!(MODEL_PRESETS as readonly string[]).includes(m))
      throw new UserError(`--models: unknown model '${m}' (${MODEL_PRESETS.join(', ')})`);
  if (!(Number.isInteger(reps) && reps > 0)) throw new UserError(`--reps must be a positive integer, got '${arg(argv, 'reps', '')}'`);
  await initBackend('wasm');
  if (!wasmDenseActive(true)) throw new UserError('dense bench: the fused dense kernels cannot run on this engine (no wasm SIMD GEMM)');
  process.stdout.write(
    `dense layers on wasm, epilogues off (matMul, Add, GELU, Multiply) vs on (the GEMM's epilogues), median ms of ${reps} alternating calls\n`,
  );
  process.stdout.write(
    `${'model'.padEnd(6)} ${'layer'.padEnd(28)} ${'fwd off'.padStart(8)} ${'fwd on'.padStart(8)} ${'f+b off'.padStart(8)} ${'f+b on'.padStart(8)}\n`,
  );
  for (const preset of models) {
    const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
    const rows = batch * tokenCount(cfg);
    const W = cfg.width;
    const x = randomTensor([rows, W], 1) as tf.Tensor2D;
    const r = randomTensor([rows, W], 2) as tf.Tensor2D;
    const dyW = randomTensor([rows, W], 3);
    const dy3W = randomTensor([rows, 3 * W], 4);
    const wQkv = randomTensor([W, 3 * W], 5, W ** -0.5) as tf.Tensor2D;
    const bQkv = randomTensor([3 * W], 6) as tf.Tensor1D;
    const wOut = randomTensor([W, W], 7, W ** -0.5) as tf.Tensor2D;
    const bOut = randomTensor([W], 8) as tf.Tensor1D;
    const w1 = randomTensor([W, 4 * W], 9, W ** -0.5) as tf.Tensor2D;
    const b1 = randomTensor([4 * W], 10) as tf.Tensor1D;
    const w2 = randomTensor([4 * W, W], 11, (4 * W) ** -0.5) as tf.Tensor2D;
    const b2 = randomTensor([W], 12) as tf.Tensor1D;
    const layers: [string, (...t: tf.Tensor[]) => tf.Tensor, tf.Tensor[], tf.Tensor][] = [
      [
        `qkv [${rows},${W}]x[${W},${3 * W}]`,
        (a, w, b) => dense(a as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D),
        [x, wQkv, bQkv],
        dy3W,
      ],
      [
        `out_proj + residual`,
        (a, w, b, res) => dense(a as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, { residual: res as tf.Tensor2D }),
        [x, wOut, bOut, r],
        dyW,
      ],
      [
        `MLP ${W}->${4 * W}->${W} + residual`,
        (a, u, c, v, d, res) =>
          residualMlp(a as tf.Tensor2D, u as tf.Tensor2D, c as tf.Tensor1D, v as tf.Tensor2D, d as tf.Tensor1D, res as tf.Tensor2D),
        [x, w1, b1, w2, b2, r],
        dyW,
      ],
    ];
    const sum = { fOff: 0, fOn: 0, bOff: 0, bOn: 0 };
    for (const [name, f, inputs, dy] of layers) {
      const epilogue = (on: boolean) => ({ denseEpilogue: on });
      const fwd = timeSwitched(reps, epilogue, () => f(...inputs));
      const both = timeSwitched(reps, epilogue, () => {
        const g = tf.grads(f)(inputs, dy);
        return g;
      });
      sum.fOff += fwd.off;
      sum.fOn += fwd.on;
      sum.bOff += both.off;
      sum.bOn += both.on;
      process.stdout.write(
        `${preset.padEnd(6)} ${name.padEnd(28)} ${fwd.off.toFixed(2).padStart(8)} ${fwd.on.toFixed(2).padStart(8)} ${both.off.toFixed(2).padStart(8)} ${both.on.toFixed(2).padStart(8)}\n`,
      );
    }
    process.stdout.write(
      `${preset.padEnd(6)} ${'one block (sum)'.padEnd(28)} ${sum.fOff.toFixed(2).padStart(8)} ${sum.fOn.toFixed(2).padStart(8)} ${sum.bOff.toFixed(2).padStart(8)} ${sum.bOn.toFixed(2).padStart(8)}`,
    );
    process.stdout.write(
      `   x ${cfg.layers} layers: ${((sum.bOff - sum.bOn) * cfg.layers).toFixed(1)} ms less per step (forward + backward)\n`,
    );
    tf.dispose([x, r, dyW, dy3W, wQkv, bQkv, wOut, bOut, w1, b1, w2, b2]);
  }
}
