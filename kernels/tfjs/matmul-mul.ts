import * as tf from '@tensorflow/tfjs';
import { kernelOptions } from '../options.js';
import { gemmFor } from './simd-modules.js';
import type { Info, KernelArgs, WasmBackendLike } from './wasm-backend.js';

/**
 * op(a) op(b) * s on the SIMD GEMM's 'multiply' epilogue: inputs {a, b, s} (2-D; s shaped as the
 * product), attrs {transposeA, transposeB}. The bits of BatchMatMul then Multiply on this backend;
 * layers.ts's residualMlp runs its GELU backward (dy W2^T times gelu'(z)) on it, after
 * wasmDenseActive() said yes.
 */
export const MATMUL_MUL_KERNEL = 'CxrMatMulMul';

function matMulMul(args: KernelArgs): Info {
  const { a, b, s } = args.inputs as { a: Info; b: Info; s: Info };
  const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
  const backend = args.backend as WasmBackendLike;
  const gemm = gemmFor(backend);
  if (!gemm) throw new Error('the fused matMul-multiply kernel needs the SIMD GEMM (check wasmDenseActive() first)');
  if (a.shape.length !== 2 || b.shape.length !== 2)
    throw new Error(`MatMulMul (wasm): a and b must be 2-D, got [${a.shape}] and [${b.shape}]`);
  const [m, k] = transposeA ? [a.shape[1]!, a.shape[0]!] : [a.shape[0]!, a.shape[1]!];
  const [kb, n] = transposeB ? [b.shape[1]!, b.shape[0]!] : [b.shape[0]!, b.shape[1]!];
  if (k !== kb)
    throw new Error(
      `MatMulMul (wasm): a [${a.shape}] and b [${b.shape}] do not chain (transposeA ${transposeA}, transposeB ${transposeB})`,
    );
  if (!tf.util.arraysEqual(s.shape, [m, n])) throw new Error(`MatMulMul (wasm): s must have shape [${m},${n}], got [${s.shape}]`);
  for (const t of [a, b, s]) {
    if (t.dtype !== 'float32') throw new Error(`MatMulMul (wasm): inputs must be float32, got ${t.dtype}`);
  }
  const out = backend.makeOutput([m, n], 'float32');
  if (m === 0 || n === 0) return out;
  const blocking = kernelOptions().gemmBlocking;
  const scratch = backend.makeOutput([Math.ceil(gemm.scratchBytes(m, n, k, blocking) / 4)], 'float32');
  const at = (t: Info) => backend.getMemoryOffset(t.dataId);
  gemm.run(
    {
      m,
      n,
      k,
      transposeA,
      transposeB,
      a: at(a),
      b: at(b),
      aIndex: [0],
      bIndex: [0],
      c: at(out),
      scratch: at(scratch),
      epilogue: { multiply: at(s) },
    },
    blocking,
  );
  backend.disposeData(scratch.dataId);
  return out;
}

export const matMulMulConfig: tf.KernelConfig = { kernelName: MATMUL_MUL_KERNEL, backendName: 'wasm', kernelFunc: matMulMul };
