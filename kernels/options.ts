import { DEFAULT_BLOCKING, type GemmBlocking, type GemmVariant } from './simd/gemm.js';

/** Which build of the SIMD GEMM runs: the fastest the engine validates ('auto'), or the one named. */
export type GemmVariantChoice = 'auto' | GemmVariant;

/** Which BatchMatMul products the SIMD GEMM takes where it runs; the others go to the backend's kernels. */
export type SimdMatMulScope = 'none' | 'batched' | 'all';

/**
 * Which of this project's kernels run, in one record instead of a switch per module. Every path
 * gives the same bits as the one it stands for, except the GEMM builds ('fma' rounds once per
 * multiply-add); the switches exist for benchmarks that compare the paths in one run, for tests of
 * each path, and to rule a kernel out when chasing a numerical difference.
 */
export interface KernelOptions {
  /**
   * The GEMM build: 'auto' ('fma' where the engine has relaxed SIMD, else 'muladd'), or one by
   * name, which routes around the GEMM where that build cannot run. CXR_WASM_RELAXED_SIMD=0 asks
   * for 'muladd' (kernels/backend.ts).
   */
  gemmVariant: GemmVariantChoice;
  /** The GEMM's k and m block sizes: for the benchmark that tunes them. */
  gemmBlocking: GemmBlocking;
  /**
   * BatchMatMul products on the SIMD GEMM: 'all' takes every product, 'batched' only batch > 1
   * (batch 1 then goes to XNNPACK), 'none' leaves every product to the backend's own kernels.
   */
  matMulScope: SimdMatMulScope;
  /** The dense layer's bias, GELU and residual add in the GEMM's epilogue (CxrDense, CxrMatMulMul). */
  denseEpilogue: boolean;
  /** LayerNorm and GELU on the SIMD kernels (off: built from tfjs kernels as on every other backend). */
  normGelu: boolean;
  /** Softmax's gradient in one pass (off: tfjs's Multiply, Sum, Multiply, Sub). */
  softmaxGrad: boolean;
  /** Transpose as row copies where whole rows move (off: every perm on the backend's own kernel). */
  transpose: boolean;
  /** The attention's head split and merge as one kernel each (off: tfjs's transpose, split and multiply). */
  attentionHeads: boolean;
  /** AdamW's update on the SIMD kernel (off: in JavaScript, the reference). */
  adamw: boolean;
}

export const DEFAULT_KERNEL_OPTIONS: Readonly<KernelOptions> = Object.freeze({
  gemmVariant: 'auto',
  gemmBlocking: DEFAULT_BLOCKING,
  matMulScope: 'all',
  denseEpilogue: true,
  normGelu: true,
  softmaxGrad: true,
  transpose: true,
  attentionHeads: true,
  adamw: true,
});

let current: Readonly<KernelOptions> = DEFAULT_KERNEL_OPTIONS;

/** The options in force now (read by the kernels on every call, so a change applies to the next one). */
export function kernelOptions(): Readonly<KernelOptions> {
  return current;
}

/**
 * Set some options for the rest of the process (or until the next call); returns the whole record
 * that was in force, so that a caller can put it back with setKernelOptions(previous).
 */
export function setKernelOptions(partial: Partial<KernelOptions>): Readonly<KernelOptions> {
  const previous = current;
  current = Object.freeze({ ...current, ...partial });
  return previous;
}

/**
 * Run `fn` with some options changed and put the previous ones back when it returns, throws, or
 * (for a promise) settles; so a test or a benchmark row cannot leave its choice to the next.
 */
export function withKernelOptions<T>(partial: Partial<KernelOptions>, fn: () => T): T {
  const previous = setKernelOptions(partial);
  const restore = () => {
    current = previous;
  };
  let out: T;
  try {
    out = fn();
  } catch (e) {
    restore();
    throw e;
  }
  if (out instanceof Promise) return out.finally(restore) as T;
  restore();
  return out;
}
