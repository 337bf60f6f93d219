import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/errors.js';
import { loadLabelSet } from '../shared/labels.js';
import { mulberry32 } from '../shared/rng.js';
import { initBackend, type BackendChoice } from '../worker/backend.js';
import { labelPriorTarget } from '../worker/losses.js';
import { resolveModelConfig } from '../worker/model/config.js';
import { CxrModel, initialParams } from '../worker/model/vit.js';
import { adamwStep, clipFactor, decayMask, scaleInPlace, sumOfSquares } from '../worker/optim.js';
import { computeGradients, localComm } from '../worker/step.js';
import { setSimdNormGelu } from '../worker/wasm-kernels.js';
import { runTorchReference } from './torch-reference.js';

/**
 * `npm run bench -- step [--models tiny,small] [--backends wasm,cpu] [--batch 32] [--image 64] [--steps 3] [--norm-gelu on|off|ab]`:
 * time of one full training step (forward, backward, all three losses, clipping, AdamW, writing the
 * parameters back) per model and backend, next to PyTorch's time for the same architecture, batch
 * and losses measured in the same run on one thread (bench/reference/vit_step.py).
 * `--norm-gelu` (wasm only): LayerNorm/GELU on the SIMD kernels (on, the default), on tfjs
 * kernels (off), or `ab`: both, steps alternating on one model, each path a row.
 */
function arg(argv: string[], name: string, dflt: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : dflt;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** One full training step of `preset` on `backend` (the setup the step bench times), run by run(). */
export async function trainingStep(backend: BackendChoice, preset: string, batch: number, image: number): Promise<{ run(): Promise<void>; dispose(): void }> {
  await initBackend(backend);
  if (tf.getBackend() !== backend) await tf.setBackend(backend);
  const set = loadLabelSet('chexpert14');
  const L = set.labels.length;
  const cfg = resolveModelConfig({ preset, imageSize: image, labels: set.labels });
  const params = initialParams(cfg, 0);
  const model = new CxrModel(cfg, params);
  const mask = decayMask(model.layout);
  const m = new Float32Array(params.length);
  const v = new Float32Array(params.length);
  const r = mulberry32(1);
  const images = Uint8Array.from({ length: batch * image * image }, () => Math.floor(r() * 256));
  const labels = Float32Array.from({ length: batch * L }, () => (r() < 0.5 ? 1 : 0));
  const opts = {
    weights: { classification: 1, contrastive: 0.5, labelPrior: 0.1 },
    targets: { uncertainty: set.labels.map(() => 'ignore' as const), blank: 'mask' as const, seed: 0 },
    posWeight: null,
    priorTarget: labelPriorTarget('orth', set.labels, null),
  };
  let s = 0;
  return {
    async run() {
      s++;
      const g = await computeGradients(model, { n: batch, images, labels, indices: Array.from({ length: batch }, (_, i) => i), epoch: 0 }, localComm, opts);
      scaleInPlace(g.grads, clipFactor(Math.sqrt(sumOfSquares(g.grads)), 1));
      adamwStep(params, g.grads, m, v, { start: 0, end: params.length }, { lr: 1e-4, beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.05 }, s, mask);
      model.assignFlat(params);
    },
    dispose: () => model.dispose(),
  };
}

/** Step times per setting of the LayerNorm/GELU switch, the settings alternating step by step. */
async function tfjsStepMs(backend: BackendChoice, preset: string, batch: number, image: number, steps: number, settings: readonly boolean[]): Promise<number[][]> {
  const step = await trainingStep(backend, preset, batch, image);
  const times: number[][] = settings.map(() => []);
  try {
    for (let s = 1; s <= steps + 1; s++) {
      for (const [i, on] of settings.entries()) {
        setSimdNormGelu(on);
        const t0 = performance.now();
        await step.run();
        if (s > 1) times[i]!.push(performance.now() - t0); // the first step compiles/warms kernels
      }
    }
  } finally {
    setSimdNormGelu(true);
    step.dispose();
  }
  return times;
}

function torchStepMs(preset: string, batch: number, image: number, steps: number): { ms: number[]; params: number; torch: string } | string {
  const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
  const a = ['--image', image, '--patch', cfg.patchSize, '--width', cfg.width, '--layers', cfg.layers, '--heads', cfg.heads, '--dim', cfg.embedDim, '--labels', 14, '--batch', batch, '--steps', steps, '--warmup', 1, '--threads', 1,
    '--pool', cfg.pool ?? 'tok', '--rank', cfg.spatialRank ?? 16, '--image-norm', cfg.inputNorm === 'image' ? 1 : 0].map(String);
  return runTorchReference<{ ms: number[]; params: number; torch: string }>('vit_step.py', a);
}

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  const backends = arg(argv, 'backends', 'wasm,cpu').split(',') as BackendChoice[];
  const batch = Number(arg(argv, 'batch', '32'));
  const image = Number(arg(argv, 'image', '64'));
  const steps = Number(arg(argv, 'steps', '3'));
  const normGelu = arg(argv, 'norm-gelu', 'on');
  if (!['on', 'off', 'ab'].includes(normGelu)) throw new UserError(`--norm-gelu must be on, off or ab, got '${normGelu}'`);
  process.stdout.write(`training step, batch ${batch} of ${image}x${image}, median of ${steps} steps after 1 warm-up (machine load affects both columns alike)\n`);
  process.stdout.write(`${'model'.padEnd(6)} ${'backend'.padEnd(8)} ${'tfjs s/step'.padStart(12)} ${'PyTorch s/step'.padStart(15)} ${'ratio'.padStart(7)}\n`);
  for (const preset of models) {
    const ref = torchStepMs(preset, batch, image, steps);
    for (const be of backends) {
      // The cpu backend is ~10x slower; one step of `small` on it takes minutes, so it gets one.
      const n = be === 'cpu' ? 1 : steps;
      const settings = be !== 'wasm' || normGelu === 'on' ? [true] : normGelu === 'off' ? [false] : [false, true];
      const all = await tfjsStepMs(be, preset, batch, image, n, settings);
      const refMs = typeof ref === 'string' ? null : median(ref.ms);
      for (const [i, on] of settings.entries()) {
        const ms = median(all[i]!);
        const label = be === 'wasm' && normGelu !== 'on' ? `${be} (LayerNorm/GELU ${on ? 'SIMD' : 'tfjs'})` : be;
        process.stdout.write(
          `${preset.padEnd(6)} ${label.padEnd(8)} ${(ms / 1000).toFixed(3).padStart(12)} ${(refMs === null ? 'n/a' : (refMs / 1000).toFixed(3)).padStart(15)} ${(refMs === null ? '' : (ms / refMs).toFixed(2) + 'x').padStart(7)}\n`,
        );
      }
    }
    if (typeof ref === 'string') process.stdout.write(`  ${ref}\n`);
    else {
      const ours = initialParams(resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels }), 0).length;
      process.stdout.write(`  PyTorch ${ref.torch}, one thread; parameters: PyTorch ${ref.params}, tfjs ${ours}${ref.params === ours ? ' (same model)' : ' (MISMATCH)'}\n`);
    }
  }
}
