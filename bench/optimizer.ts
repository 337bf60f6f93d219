import { loadLabelSet } from '../shared/labels.js';
import { mulberry32, normalSource } from '../shared/random/generators.js';
import { resolveModelConfig } from '../model/config.js';
import { modelLayout } from '../model/vit.js';
import { adamwStep, clipFactor, decayMask, scaleInPlace, sumOfSquares } from '../worker/steps/adamw.js';
import { withKernelOptions } from '../kernels/options.js';
import { simdAdamwAvailable } from '../kernels/simd/adamw.js';
import { median } from './median.js';
import { arg } from './args.js';

/**
 * `npm run bench -- optimizer [--models tiny,small] [--steps 12]`: the optimizer's part of a
 * training step on the flat vectors of each model (the global norm, the clipping and AdamW), as
 * before (the JavaScript loop after a separate scaling pass, the reference) and now (AdamW on the
 * SIMD kernel of kernels/simd/adamw.ts, which applies the clipping scale as it reads each
 * gradient), alternating step by step. A 64 MiB buffer is written between steps so the vectors
 * come from memory, as after a training step's forward and backward. Both give the same bits.
 */

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  const steps = Number(arg(argv, 'steps', '12'));
  const evict = new Float32Array(16 << 20);
  const hyper = { lr: 1e-4, beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.05 };
  process.stdout.write(
    `optimizer: global norm, clipping by it, AdamW over the flat vectors; median of ${steps} steps after 2, vectors from memory${simdAdamwAvailable ? '' : ' (no wasm SIMD here: both rows run the loop)'}\n`,
  );
  process.stdout.write(
    `${'model'.padEnd(6)} ${'params'.padStart(10)} ${'loop + scale pass ms'.padStart(21)} ${'SIMD, fused scale ms'.padStart(21)} ${'speed-up'.padStart(9)}\n`,
  );
  for (const preset of models) {
    const layout = modelLayout(resolveModelConfig({ preset, imageSize: 64, labels: loadLabelSet('chexpert14').labels }));
    const n = layout.total;
    const mask = decayMask(layout);
    const r = normalSource(mulberry32(1));
    const grads = Float32Array.from({ length: n }, () => r() * 1e-2);
    const p0 = Float32Array.from({ length: n }, () => r() * 0.02);
    const state = [false, true].map(() => ({
      p: Float32Array.from(p0),
      m: new Float32Array(n),
      v: new Float32Array(n),
      g: new Float32Array(n),
    }));
    const times: number[][] = [[], []];
    for (let s = 1; s <= steps + 2; s++) {
      for (const [i, simd] of [false, true].entries()) {
        const st = state[i]!;
        st.g.set(grads); // a fresh gradient each step, as the backward pass writes one
        evict.fill(s);
        withKernelOptions({ adamw: simd }, () => {
          const t0 = performance.now();
          const clip = clipFactor(Math.sqrt(sumOfSquares(st.g)), 1e-3); // small enough that it scales
          if (simd) adamwStep(st.p, st.g, st.m, st.v, { start: 0, end: n }, hyper, s, mask, clip);
          else {
            scaleInPlace(st.g, clip);
            adamwStep(st.p, st.g, st.m, st.v, { start: 0, end: n }, hyper, s, mask);
          }
          if (s > 2) times[i]!.push(performance.now() - t0);
        });
      }
    }
    const same = state[0]!.p.every((x, j) => Object.is(x, state[1]!.p[j]));
    const [loop, simd] = times.map(median) as [number, number];
    process.stdout.write(
      `${preset.padEnd(6)} ${String(n).padStart(10)} ${loop.toFixed(1).padStart(21)} ${simd.toFixed(1).padStart(21)} ${(loop / simd).toFixed(2).padStart(8)}x${same ? '' : '  (PARAMETERS DIFFER)'}\n`,
    );
  }
}
