import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import { loadLabelSet } from '../shared/labels.js';
import { initBackend } from '../kernels/backend.js';
import { MODEL_PRESETS, resolveModelConfig, tokenCount } from '../model/config.js';
import { attentionHeads } from '../model/layers.js';
import { wasmAttentionHeadsActive } from '../kernels/tfjs/attention-heads.js';
import { arg } from './args.js';
import { randomTensor, timeSwitched } from './switched.js';

/**
 * `npm run bench -- transpose [--models tiny,small] [--batch 32] [--image 64] [--reps 30]`: on the
 * wasm backend, at one attention layer's shapes, the merge's Transpose ([B, H, T, d] -> [B, T, H, d])
 * and its gradient's (the reverse), and the head split (qkv [B*T, 3W] -> q * d^-0.5, k, v) forward
 * and forward + backward, each on the row-copy kernels (kernels/simd/transpose.ts) next to the
 * backend's Transpose with tfjs's split, multiply and concat (the reference), alternating call by
 * call in one run; then x layers for one step.
 */

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  const batch = Number(arg(argv, 'batch', '32'));
  const image = Number(arg(argv, 'image', '64'));
  const reps = Number(arg(argv, 'reps', '30'));
  for (const m of models)
    if (!(MODEL_PRESETS as readonly string[]).includes(m))
      throw new UserError(`--models: unknown model '${m}' (known: ${MODEL_PRESETS.join(', ')})`);
  if (!Number.isInteger(reps) || reps < 1) throw new UserError(`--reps must be a positive integer, got '${arg(argv, 'reps', '')}'`);
  await initBackend('wasm');
  if (!wasmAttentionHeadsActive()) throw new UserError('transpose: the row-copy kernels cannot run on this engine (no wasm SIMD)');
  process.stdout.write(
    `wasm, batch ${batch} of ${image}x${image}, ms per call (median of ${reps}), tfjs = the backend's Transpose + split/multiply/concat, rows = kernels/simd/transpose.ts\n`,
  );
  process.stdout.write(`${'model'.padEnd(6)} ${'op'.padEnd(44)} ${'tfjs'.padStart(8)} ${'rows'.padStart(8)}\n`);
  for (const preset of models) {
    const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
    const [W, H, T] = [cfg.width, cfg.heads, tokenCount(cfg)];
    const d = W / H;
    const qkv = randomTensor([batch * T, 3 * W], 1) as tf.Tensor2D;
    const ctx = randomTensor([batch, H, T, d], 2);
    const dy = [3, 4, 5].map((s) => randomTensor([batch * H, T, d], s));
    const timed = (f: () => tf.Tensor | tf.Tensor[]) => timeSwitched(reps, (on) => ({ transpose: on, attentionHeads: on }), f);
    const rows: [string, { off: number; on: number }][] = [
      [`merge Transpose [${batch},${H},${T},${d}] [0,2,1,3]`, timed(() => tf.transpose(ctx, [0, 2, 1, 3]))],
      [
        `its gradient, [${batch},${T},${H},${d}] back`,
        timed(() => tf.tidy(() => tf.transpose(tf.reshape(ctx, [batch, T, H, d]), [0, 2, 1, 3]))),
      ],
      [`head split [${batch * T},${3 * W}] -> q*s, k, v`, timed(() => attentionHeads(qkv, batch, H, d ** -0.5))],
      [
        'head split forward + backward',
        timed(() =>
          tf.tidy(() =>
            tf.grads((x: tf.Tensor) =>
              tf.addN(attentionHeads(x as tf.Tensor2D, batch, H, d ** -0.5).map((t, i) => tf.sum(tf.mul(t, dy[i]!)))),
            )([qkv]),
          ),
        ),
      ],
    ];
    for (const [name, { off, on }] of rows)
      process.stdout.write(`${preset.padEnd(6)} ${name.padEnd(44)} ${off.toFixed(3).padStart(8)} ${on.toFixed(3).padStart(8)}\n`);
    const perStep = (i: number) => rows[i]![1];
    const [m0, m1] = [perStep(0).off + perStep(1).off, perStep(0).on + perStep(1).on];
    const { off: h0, on: h1 } = perStep(3);
    process.stdout.write(
      `${preset.padEnd(6)} ${`x ${cfg.layers} layers (merge both ways + split f+b)`.padEnd(44)} ${(cfg.layers * (m0 + h0)).toFixed(3).padStart(8)} ${(cfg.layers * (m1 + h1)).toFixed(3).padStart(8)}\n`,
    );
    tf.dispose([qkv, ctx, ...dy]);
  }
}
