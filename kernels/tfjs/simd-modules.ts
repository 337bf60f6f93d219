import * as tf from '@tensorflow/tfjs';
import { kernelOptions, type GemmVariantChoice } from '../options.js';
import { simdColsum, type SimdColsum } from '../simd/colsum.js';
import { gemmVariants, simdGemm, type SimdGemm } from '../simd/gemm.js';
import { simdNormGelu, type SimdNormGelu } from '../simd/norm-gelu.js';
import { simdSoftmax, type SimdSoftmax } from '../simd/softmax.js';
import { simdTranspose, type SimdTranspose } from '../simd/transpose.js';
import type { Info, KernelArgs, WasmBackendLike } from './wasm-backend.js';

/**
 * A kernel module bound to a backend's heap, made once per backend: null where it cannot run
 * (tfjs found no SIMD, or the memory cannot be imported).
 */
function boundToHeap<T>(bind: (memory: unknown) => T | null): (backend: WasmBackendLike) => T | null {
  const made = new WeakMap<object, T | null>();
  return (backend) => {
    let k = made.get(backend);
    if (k === undefined) {
      k = tfjsSaysNoSimd() ? null : bind(backend.wasm?.asm?.memory);
      made.set(backend, k);
    }
    return k;
  };
}

/** Whether tfjs decided this engine lacks wasm SIMD (the flag may not be evaluated yet: then no). */
function tfjsSaysNoSimd(): boolean {
  try {
    return tf.env().get('WASM_HAS_SIMD_SUPPORT') === false;
  } catch {
    return false;
  }
}

/**
 * The GEMM builds bound to this backend's heap, each made on first use and kept ('auto': the
 * first of gemmVariants() that binds, decided once), or null where none can run.
 */
const gemmBuildsFor: (backend: WasmBackendLike) => ((v: GemmVariantChoice) => SimdGemm | null) | null = boundToHeap((memory) => {
  const builds = new Map<GemmVariantChoice, SimdGemm | null>();
  const build = (v: GemmVariantChoice): SimdGemm | null => {
    let g = builds.get(v);
    if (g === undefined) {
      g = v === 'auto' ? gemmVariants().reduce<SimdGemm | null>((found, w) => found ?? build(w), null) : simdGemm(memory, v);
      builds.set(v, g);
    }
    return g;
  };
  return build;
});

/** The SIMD GEMM build the options name, bound to this backend's heap, or null where it cannot run. */
export function gemmFor(backend: WasmBackendLike): SimdGemm | null {
  return gemmBuildsFor(backend)?.(kernelOptions().gemmVariant) ?? null;
}

/** The LayerNorm/GELU kernels bound to this backend's heap, or null where they cannot run. */
export const normGeluFor: (backend: WasmBackendLike) => SimdNormGelu | null = boundToHeap(simdNormGelu);

/** The softmax-gradient kernel bound to this backend's heap, or null where it cannot run. */
export const softmaxFor: (backend: WasmBackendLike) => SimdSoftmax | null = boundToHeap(simdSoftmax);

/** The strided row copies bound to this backend's heap, or null where they cannot run. */
export const transposeFor: (backend: WasmBackendLike) => SimdTranspose | null = boundToHeap(simdTranspose);

/** The column-sum kernel bound to this backend's heap, or null where it cannot run. */
export const colsumFor: (backend: WasmBackendLike) => SimdColsum | null = boundToHeap(simdColsum);

/**
 * The module `moduleFor` binds for this call's backend, the backend, and a tensor's offset in its
 * heap, for a kernel whose inputs are all float32 (`what` names the kernel in the errors). The
 * kernel's caller asked its wasm*Active() first, so a missing module is a bug, not a fallback.
 */
export function boundFloat32<T>(
  args: KernelArgs,
  moduleFor: (b: WasmBackendLike) => T | null,
  what: { cannotRun: string; inputs: string },
): { k: T; backend: WasmBackendLike; at: (t: Info) => number } {
  const backend = args.backend as WasmBackendLike;
  const k = moduleFor(backend);
  if (!k) throw new Error(what.cannotRun);
  for (const t of Object.values(args.inputs) as Info[]) {
    if (t.dtype !== 'float32') throw new Error(`${what.inputs}: inputs must be float32, got ${t.dtype}`);
  }
  return { k, backend, at: (t) => backend.getMemoryOffset(t.dataId) };
}
