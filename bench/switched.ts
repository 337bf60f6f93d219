import * as tf from '@tensorflow/tfjs';
import { mulberry32, normalSource } from '../shared/random/generators.js';
import { withKernelOptions, type KernelOptions } from '../kernels/options.js';
import { median } from './median.js';

/**
 * Median ms of `f` over `reps` calls with a wasm path switched off and on (the kernel options
 * `options(on)`), alternating call by call after one warm-up pair; each call's options are put back
 * after it. The wasm backend computes synchronously, so the time of the call is the kernels' (a
 * helper of the benchmarks, not one).
 */
export function timeSwitched(
  reps: number,
  options: (on: boolean) => Partial<KernelOptions>,
  f: () => tf.Tensor | tf.Tensor[],
): { off: number; on: number } {
  const times = { off: [] as number[], on: [] as number[] };
  for (let rep = -1; rep < reps; rep++) {
    for (const on of [false, true]) {
      const ms = withKernelOptions(options(on), () => {
        const t0 = performance.now();
        const out = f();
        const ms = performance.now() - t0;
        tf.dispose(out);
        return ms;
      });
      if (rep >= 0) times[on ? 'on' : 'off'].push(ms);
    }
  }
  return { off: median(times.off), on: median(times.on) };
}

/** A tensor of standard normal values (times `scale`) from a seeded source. */
export function randomTensor(shape: number[], seed: number, scale = 1): tf.Tensor {
  const r = normalSource(mulberry32(seed));
  return tf.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => r() * scale),
    shape,
  );
}
