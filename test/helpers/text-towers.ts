import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs';
import type { ParamGetter } from '../../model/blocks.js';
import type { ParamSpec } from '../../model/param-specs.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

/**
 * Seeded values for every parameter of `specs`, far from the initial ones so that every tensor
 * matters to the output: normal draws at the spec's std (at least 0.05) or around its constant.
 */
export function randomTensors(specs: readonly ParamSpec[], seed: number): Map<string, Float32Array> {
  const normal = normalSource(mulberry32(seed));
  const out = new Map<string, Float32Array>();
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = 'std' in s.init ? normal() * Math.max(s.init.std, 0.05) : s.init.value + 0.1 * normal();
    out.set(s.name, v);
  }
  return out;
}

/** TF tensors of `values` (by name) as a ParamGetter, and their disposal. */
export function tensorGetter(specs: readonly ParamSpec[], values: Map<string, Float32Array>): { p: ParamGetter; dispose(): void } {
  const m = new Map(specs.map((s) => [s.name, tf.tensor(values.get(s.name)!, s.shape)]));
  const p = (<T extends tf.Tensor>(name: string): T => {
    const t = m.get(name);
    if (!t) throw new Error(`no tensor '${name}'`);
    return t as T;
  }) as ParamGetter;
  return { p, dispose: () => m.forEach((t) => t.dispose()) };
}

/** The python3 that has torch, or null (the reference tests skip then). */
export function torchPython(): string | null {
  return (
    ['/usr/bin/python3', 'python3'].find(
      (p) =>
        spawnSync(p, ['-c', 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'], {
          stdio: 'ignore',
          env: referenceEnv(),
        }).status === 0,
    ) ?? null
  );
}

/** One BLAS thread and without this machine's OPENBLAS_* tuning (as bench/torch-reference.ts runs PyTorch). */
export function referenceEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: '1', OMP_NUM_THREADS: '1' };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  return env;
}
