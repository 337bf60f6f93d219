import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import { wasmNormGeluActive } from './gelu.js';
import { MATMUL_MUL_KERNEL } from './matmul-mul.js';
import { gemmFor } from './simd-modules.js';
import { wasmKernelsReady, type Info, type KernelArgs, type WasmBackendLike } from './wasm-backend.js';

/**
 * The fused dense layer on the SIMD GEMM's epilogues (kernels/simd/gemm.ts): inputs
 * {x [rows, k], w [k, n], b [n]} and, optionally, residual [rows, n]; attrs {gelu: boolean}.
 * Output [y] with y = x W + b (+ residual), or with gelu [y, slope]: y = gelu(z) and
 * slope = gelu'(z) for z = x W + b, so that the backward is dy * slope (CxrGeluGrad's bits
 * without its erf and exp). The same operations in the same order as BatchMatMul then Add (then
 * CxrGelu) on this backend, so the same bits. Only model/layers.ts calls it, after
 * wasmDenseActive() said yes.
 */
export const DENSE_KERNEL = 'CxrDense';

/**
 * Whether layers.ts's dense runs on the fused kernel now: the active backend is wasm, the option
 * is on, and the unfused ops it stands for would run on the same kernels (the dense product on
 * the SIMD GEMM, scope 'all'; for `gelu`, GELU on CxrGelu), which is what makes the bits equal.
 */
export function wasmDenseActive(gelu: boolean): boolean {
  const { denseEpilogue, matMulScope } = kernelOptions();
  if (!denseEpilogue || matMulScope !== 'all' || (gelu && !wasmNormGeluActive())) return false;
  return wasmKernelsReady([DENSE_KERNEL, MATMUL_MUL_KERNEL], gemmFor);
}

function dense(args: KernelArgs): Info | Info[] {
  const { x, w, b, residual } = args.inputs as { x: Info; w: Info; b: Info; residual?: Info };
  const { gelu } = args.attrs as unknown as { gelu: boolean };
  const backend = args.backend as WasmBackendLike;
  const gemm = gemmFor(backend);
  if (!gemm) throw new Error('the fused dense kernel needs the SIMD GEMM (check wasmDenseActive() first)');
  if (x.shape.length !== 2 || w.shape.length !== 2) throw new Error(`Dense (wasm): x and w must be 2-D, got [${x.shape}] and [${w.shape}]`);
  const [m, k] = x.shape as [number, number];
  const [kw, n] = w.shape as [number, number];
  if (k !== kw) throw new Error(`Dense (wasm): x [${x.shape}] and w [${w.shape}] do not chain`);
  if (!tf.util.arraysEqual(b.shape, [n])) throw new Error(`Dense (wasm): b must have shape [${n}], got [${b.shape}]`);
  if (residual && !tf.util.arraysEqual(residual.shape, [m, n]))
    throw new Error(`Dense (wasm): residual must have shape [${m},${n}], got [${residual.shape}]`);
  if (residual && gelu) throw new Error('Dense (wasm): a residual or a GELU, not both');
  for (const t of [x, w, b, ...(residual ? [residual] : [])]) {
    if (t.dtype !== 'float32') throw new Error(`Dense (wasm): inputs must be float32, got ${t.dtype}`);
  }
  const y = backend.makeOutput([m, n], 'float32');
  const slope = gelu ? backend.makeOutput([m, n], 'float32') : null;
  const outs = slope ? [y, slope] : y;
  if (m === 0 || n === 0) return outs;
  const blocking = kernelOptions().gemmBlocking;
  const scratch = backend.makeOutput([Math.ceil(gemm.scratchBytes(m, n, k, blocking) / 4)], 'float32');
  const at = (t: Info) => backend.getMemoryOffset(t.dataId);
  gemm.run(
    {
      m,
      n,
      k,
      transposeA: false,
      transposeB: false,
      a: at(x),
      b: at(w),
      aIndex: [0],
      bIndex: [0],
      c: at(y),
      scratch: at(scratch),
      epilogue: { bias: at(b), ...(residual ? { residual: at(residual) } : {}), ...(slope ? { slope: at(slope) } : {}) },
    },
    blocking,
  );
  backend.disposeData(scratch.dataId);
  return outs;
}

export const denseConfig: tf.KernelConfig = { kernelName: DENSE_KERNEL, backendName: 'wasm', kernelFunc: dense };
