import * as tf from '@tensorflow/tfjs';
import { simdColsum, type SimdColsum } from './simd/colsum.js';
import { DEFAULT_BLOCKING, gemmVariants, simdGemm, type GemmBlocking, type GemmVariant, type SimdGemm } from './simd/gemm.js';
import { simdNormGelu, type SimdNormGelu } from './simd/norm-gelu.js';
import { simdSoftmax, type SimdSoftmax } from './simd/softmax.js';
import { adjacentSwap, simdTranspose, type SimdTranspose } from './simd/transpose.js';

/**
 * Kernels of tfjs-backend-wasm 4.22 replaced or added here. Replaced, each keeping the backend's
 * own kernel as its fallback: BatchMatMul (every product on the SIMD GEMM of ./simd-gemm.ts; where
 * that cannot run, transposed operands through an explicit Transpose to XNNPACK), Sum over leading
 * axes (./simd-colsum.ts), SplitV (memmoves), Identity (shared data) and Transpose where whole rows
 * move (./simd-transpose.ts). Added: the LayerNorm/GELU
 * kernels of ./simd-norm-gelu.ts, the fused dense layer and matMul-multiply on the GEMM's
 * epilogues (CxrDense, CxrMatMulMul), softmax's gradient (./simd-softmax.ts), the attention's
 * head split and merge (CxrAttentionHeads and its gradient, ./simd-transpose.ts), and gradient
 * kernels the backend does not ship, built only from
 * kernels it does ship (StridedSlice, PadV2, BatchMatMul, Concat, OneHot, Cast), so they run at XNNPACK
 * speed and need no extra wasm code:
 * - Conv2DBackpropFilter: the gradient of conv2d with respect to its filter (a conv patch stem).
 * - UnsortedSegmentSum: the gradient of gather (embedding lookups).
 * The model itself avoids both ops on its hot path (patch embedding is reshape + matMul), but
 * any conv/gather a user model adds trains on wasm instead of failing with "kernel not found".
 */

// The backend object is opaque here; these are the parts used on it.
interface WasmBackendLike {
  disposeData(dataId: object, force?: boolean): boolean;
  incRef(dataId: object): void;
  makeOutput(shape: number[], dtype: tf.DataType): Info;
  /** Byte offset of a tensor's values in the backend's heap. */
  getMemoryOffset(dataId: object): number;
  /** The Emscripten module; `asm.memory` is its exported heap. */
  wasm: { asm?: { memory?: unknown } } | null;
}
type Info = tf.TensorInfo;
type Run = (name: string, inputs: Record<string, Info> | Info[], attrs: Record<string, unknown>) => Info;

function runner(backend: WasmBackendLike, scratch: Info[]): Run {
  return (name, inputs, attrs) => {
    const k = tf.getKernel(name, 'wasm');
    if (!k) throw new Error(`wasm backend has no '${name}' kernel`);
    const out = k.kernelFunc({
      inputs: inputs as unknown as tf.NamedTensorInfoMap,
      backend: backend as unknown as tf.KernelBackend,
      attrs: attrs as tf.NamedAttrMap,
    }) as Info;
    scratch.push(out);
    return out;
  };
}

/** Run `body` with a scratch list; every intermediate except the returned one is freed. */
function withScratch(backend: WasmBackendLike, body: (run: Run) => Info): Info {
  const scratch: Info[] = [];
  const out = body(runner(backend, scratch));
  for (const t of scratch) if (t !== out) backend.disposeData(t.dataId);
  return out;
}

interface Conv2DBackpropFilterAttrs {
  strides: number | [number, number];
  pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
  dataFormat: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
  filterShape: [number, number, number, number];
}

/**
 * dW[i, j, :, :] = X_ij^T dY, where X_ij [b*oh*ow, ci] are the input pixels that kernel tap
 * (i, j) touches, taken from the zero-padded input with one strided slice per tap.
 */
function conv2DBackpropFilter(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): Info {
  const { x, dy } = args.inputs as { x: Info; dy: Info };
  const attrs = args.attrs as unknown as Conv2DBackpropFilterAttrs;
  if (attrs.dataFormat !== 'NHWC') throw new Error('Conv2DBackpropFilter (wasm): only NHWC is supported');
  const backend = args.backend as WasmBackendLike;
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    attrs.filterShape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
    false,
    'channelsLast',
  );
  const { batchSize: b, inChannels: ci, outChannels: co, outHeight: oh, outWidth: ow } = info;
  const { filterHeight: fh, filterWidth: fw, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
  const { top, bottom, left, right } = info.padInfo;
  return withScratch(backend, (run) => {
    const xp =
      top || bottom || left || right
        ? run(
            'PadV2',
            { x },
            {
              paddings: [
                [0, 0],
                [top, bottom],
                [left, right],
                [0, 0],
              ],
              constantValue: 0,
            },
          )
        : x;
    const dy2 = run('Reshape', { x: dy }, { shape: [1, b * oh * ow, co] });
    const taps: Info[] = [];
    for (let i = 0; i < fh; i++) {
      for (let j = 0; j < fw; j++) {
        const patch = run(
          'StridedSlice',
          { x: xp },
          {
            begin: [0, i * dh, j * dw, 0],
            end: [b, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, ci],
            strides: [1, sh, sw, 1],
            beginMask: 0,
            endMask: 0,
            ellipsisMask: 0,
            newAxisMask: 0,
            shrinkAxisMask: 0,
          },
        );
        const p2 = run('Reshape', { x: patch }, { shape: [1, b * oh * ow, ci] });
        taps.push(run('BatchMatMul', { a: p2, b: dy2 }, { transposeA: true, transposeB: false }));
      }
    }
    const stacked = taps.length === 1 ? taps[0]! : run('Concat', taps, { axis: 0 });
    return run('Reshape', { x: stacked }, { shape: [fh, fw, ci, co] });
  });
}

/**
 * out[s] = sum of x[i] over i with segmentIds[i] = s, as onehot(segmentIds)^T x: one matMul,
 * exact up to float summation order. Ids outside [0, numSegments) contribute nothing, as in TF.
 */
function unsortedSegmentSum(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): Info {
  const { x, segmentIds } = args.inputs as { x: Info; segmentIds: Info };
  const { numSegments } = args.attrs as unknown as { numSegments: number };
  const backend = args.backend as WasmBackendLike;
  if (segmentIds.shape.length !== 1) throw new Error('UnsortedSegmentSum (wasm): segmentIds must be 1-D');
  const n = segmentIds.shape[0]!;
  const rest = x.shape.slice(1);
  const inner = rest.reduce((a, c) => a * c, 1);
  return withScratch(backend, (run) => {
    const ids = segmentIds.dtype === 'int32' ? segmentIds : run('Cast', { x: segmentIds }, { dtype: 'int32' });
    // wasm's OneHot always writes int32 (whatever dtype says), so it is cast explicitly.
    const oneHotInt = run('OneHot', { indices: ids }, { dtype: 'int32', depth: numSegments, onValue: 1, offValue: 0 });
    const oneHot = run('Cast', { x: oneHotInt }, { dtype: 'float32' });
    const oh3 = run('Reshape', { x: oneHot }, { shape: [1, n, numSegments] });
    const xf = x.dtype === 'float32' ? x : run('Cast', { x }, { dtype: 'float32' });
    const x3 = run('Reshape', { x: xf }, { shape: [1, n, inner] });
    const sum = run('BatchMatMul', { a: oh3, b: x3 }, { transposeA: true, transposeB: false });
    const shaped = run('Reshape', { x: sum }, { shape: [numSegments, ...rest] });
    return x.dtype === 'float32' ? shaped : run('Cast', { x: shaped }, { dtype: x.dtype });
  });
}

/**
 * BatchMatMul with transposeA/transposeB runs about 10x slower than the plain product on
 * tfjs-backend-wasm 4.22 (XNNPACK only takes the untransposed layout), and every matMul gradient
 * uses those flags. Transposing the operand first (a memory-bound copy) and multiplying plainly
 * gives the same values at a fraction of the cost, for every caller including tfjs's own gradients.
 */
function untransposedBatchMatMul(plain: tf.KernelFunc) {
  return (args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): Info => {
    const { a, b } = args.inputs as { a: Info; b: Info };
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as WasmBackendLike;
    const call = (x: Info, y: Info) =>
      plain({
        inputs: { a: x, b: y },
        backend: backend as unknown as tf.KernelBackend,
        attrs: { transposeA: false, transposeB: false },
      }) as Info;
    if (!transposeA && !transposeB) return call(a, b);
    const swapLast = (t: Info) => {
      const perm = t.shape.map((_, i) => i);
      const r = perm.length;
      [perm[r - 2], perm[r - 1]] = [perm[r - 1]!, perm[r - 2]!];
      return tf.getKernel('Transpose', 'wasm')!.kernelFunc({
        inputs: { x: t },
        backend: backend as unknown as tf.KernelBackend,
        attrs: { perm },
      }) as Info;
    };
    const at = transposeA ? swapLast(a) : a;
    const bt = transposeB ? swapLast(b) : b;
    const out = call(at, bt);
    if (at !== a) backend.disposeData(at.dataId);
    if (bt !== b) backend.disposeData(bt.dataId);
    return out;
  };
}

/**
 * For each index of the broadcast batch shape `outer` (row-major), the flat index into an
 * operand's batch dims `dims`: right-aligned as in NumPy, a size-1 (or missing) dim repeats.
 */
export function broadcastBatchIndex(outer: readonly number[], dims: readonly number[]): Int32Array {
  const total = outer.reduce((x, y) => x * y, 1);
  const out = new Int32Array(total);
  const lead = outer.length - dims.length;
  for (let t = 0; t < total; t++) {
    let rest = t;
    let idx = 0;
    let stride = 1;
    for (let d = outer.length - 1; d >= lead; d--) {
      const coord = rest % outer[d]!;
      rest = Math.floor(rest / outer[d]!);
      const size = dims[d - lead]!;
      if (size !== 1) idx += coord * stride;
      stride *= size;
    }
    out[t] = idx;
  }
  return out;
}

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

/** Which build of the SIMD GEMM runs: the fastest the engine validates ('auto'), or the one named. */
export type GemmVariantChoice = 'auto' | GemmVariant;
let variantChoice: GemmVariantChoice = 'auto';

/**
 * Pick the GEMM build: 'auto' (the default: 'fma' where the engine has relaxed SIMD, else
 * 'muladd'), or one by name, which routes around the GEMM where that build cannot run. For
 * benchmarks that compare the builds in one run, for tests of each, and for
 * CXR_WASM_RELAXED_SIMD=0 (worker/backend.ts), which asks for 'muladd'.
 */
export function setSimdGemmVariant(v: GemmVariantChoice): void {
  variantChoice = v;
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

/** The SIMD GEMM build the choice names, bound to this backend's heap, or null where it cannot run. */
function gemmFor(backend: WasmBackendLike): SimdGemm | null {
  return gemmBuildsFor(backend)?.(variantChoice) ?? null;
}

let blocking: GemmBlocking = DEFAULT_BLOCKING;

/** The GEMM's k and m block sizes (worker/simd-gemm.ts's DEFAULT_BLOCKING unless set): for the benchmark that tunes them. */
export function setSimdGemmBlocking(b: GemmBlocking = DEFAULT_BLOCKING): void {
  blocking = b;
}

/** Which BatchMatMul products the SIMD GEMM takes where it runs; the others go to `plain`. */
export type SimdMatMulScope = 'none' | 'batched' | 'all';
let scope: SimdMatMulScope = 'all';

/**
 * Route products to the SIMD GEMM (where it runs): 'all' (the default) takes every product,
 * 'batched' only batch > 1 (batch 1 then goes to XNNPACK), 'none' leaves every product to the
 * backend's own kernels. For benchmarks that compare the paths in one run, and to rule the kernel
 * out when chasing a numerical difference.
 */
export function setSimdMatMulScope(s: SimdMatMulScope): void {
  scope = s;
}

/** Which BatchMatMul path serves batch > 1 on the active wasm backend: 'simd' or 'fallback'. */
export function wasmBatchMatMulPath(): 'simd' | 'fallback' {
  return wasmGemmVariant() ? 'simd' : 'fallback';
}

/**
 * The GEMM build that serves BatchMatMul on the active wasm backend (batch > 1 products, and batch
 * 1 under the default scope 'all'), or null where the backend's own kernels do.
 */
export function wasmGemmVariant(): GemmVariant | null {
  if (tf.getBackend() !== 'wasm') throw new Error(`wasmGemmVariant: the active backend is ${tf.getBackend()}, not wasm`);
  if (scope === 'none') return null;
  return gemmFor(tf.backend() as unknown as WasmBackendLike)?.variant ?? null;
}

/**
 * BatchMatMul on the SIMD GEMM of worker/simd-gemm.ts, which reads the operands in place in any
 * of the four layouts: the attention products (batch > 1), which the wasm kernel runs in a scalar
 * loop, and the dense layers' (batch 1), which XNNPACK runs a little slower in the step (the
 * transposed ones after an explicit Transpose; docs/performance.md). Engines without wasm SIMD,
 * non-float32 operands and the products the scope leaves out go to `plain`.
 */
function simdBatchedMatMul(plain: (args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }) => Info) {
  return (args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): Info => {
    const { a, b } = args.inputs as { a: Info; b: Info };
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as WasmBackendLike;
    const outer = tf.backend_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const batch = outer.reduce((x, y) => x * y, 1);
    if (scope === 'none' || (batch <= 1 && scope !== 'all') || a.dtype !== 'float32' || b.dtype !== 'float32') return plain(args);
    const gemm = gemmFor(backend);
    if (!gemm) return plain(args);
    const ra = a.shape.length;
    const rb = b.shape.length;
    const [m, k] = transposeA ? [a.shape[ra - 1]!, a.shape[ra - 2]!] : [a.shape[ra - 2]!, a.shape[ra - 1]!];
    const [kb, n] = transposeB ? [b.shape[rb - 1]!, b.shape[rb - 2]!] : [b.shape[rb - 2]!, b.shape[rb - 1]!];
    if (k !== kb) {
      throw new Error(
        `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
      );
    }
    const out = backend.makeOutput([...outer, m, n], 'float32');
    if (m === 0 || n === 0) return out;
    const scratch = backend.makeOutput([Math.ceil(gemm.scratchBytes(m, n, k, blocking) / 4)], 'float32');
    gemm.run(
      {
        m,
        n,
        k,
        transposeA,
        transposeB,
        a: backend.getMemoryOffset(a.dataId),
        b: backend.getMemoryOffset(b.dataId),
        aIndex: broadcastBatchIndex(outer, a.shape.slice(0, -2)),
        bIndex: broadcastBatchIndex(outer, b.shape.slice(0, -2)),
        c: backend.getMemoryOffset(out.dataId),
        scratch: backend.getMemoryOffset(scratch.dataId),
      },
      blocking,
    );
    backend.disposeData(scratch.dataId);
    return out;
  };
}

/**
 * The fused dense layer on the SIMD GEMM's epilogues (worker/simd-gemm.ts), registered with the
 * others: inputs {x [rows, k], w [k, n], b [n]} and, optionally, residual [rows, n]; attrs
 * {gelu: boolean}. Output [y] with y = x W + b (+ residual), or with gelu [y, slope]: y = gelu(z)
 * and slope = gelu'(z) for z = x W + b, so that the backward is dy * slope (CxrGeluGrad's bits
 * without its erf and exp). The same operations in the same order as BatchMatMul then Add (then
 * CxrGelu) on this backend, so the same bits. Only worker/model/layers.ts calls it, after
 * wasmDenseActive() said yes.
 */
export const DENSE_KERNEL = 'CxrDense';

/**
 * Whether a fused path can run now: the active backend is wasm, the kernels `names` are
 * registered on it, and `moduleFor` could build their SIMD module in its memory.
 */
function wasmKernelsReady(names: readonly string[], moduleFor: (b: WasmBackendLike) => unknown): boolean {
  if (tf.getBackend() !== 'wasm' || names.some((k) => !tf.getKernel(k, 'wasm'))) return false;
  return moduleFor(tf.backend() as unknown as WasmBackendLike) !== null;
}

let denseOn = true;

/**
 * Turn the fused dense layer off (false) or back on: layers.ts then runs matMul, add and GELU as
 * separate kernels. For benchmarks that compare the paths in one run, and to rule the epilogue
 * out when chasing a numerical difference (both paths give the same bits).
 */
export function setSimdDenseEpilogue(on: boolean): void {
  denseOn = on;
}

/**
 * Whether layers.ts's dense runs on the fused kernel now: the active backend is wasm, the switch
 * is on, and the unfused ops it stands for would run on the same kernels (the dense product on
 * the SIMD GEMM, scope 'all'; for `gelu`, GELU on CxrGelu), which is what makes the bits equal.
 */
export function wasmDenseActive(gelu: boolean): boolean {
  if (!denseOn || scope !== 'all' || (gelu && !wasmNormGeluActive())) return false;
  return wasmKernelsReady([DENSE_KERNEL, MATMUL_MUL_KERNEL], gemmFor);
}

function denseKernel(args: KernelArgs): Info | Info[] {
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

/**
 * op(a) op(b) * s on the SIMD GEMM's 'multiply' epilogue, registered with the others: inputs
 * {a, b, s} (2-D; s shaped as the product), attrs {transposeA, transposeB}. The bits of
 * BatchMatMul then Multiply on this backend; layers.ts's residualMlp runs its GELU backward
 * (dy W2^T times gelu'(z)) on it, after wasmDenseActive() said yes.
 */
export const MATMUL_MUL_KERNEL = 'CxrMatMulMul';

function matMulMulKernel(args: KernelArgs): Info {
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

/** The LayerNorm/GELU kernels bound to this backend's heap, or null where they cannot run. */
const normGeluFor: (backend: WasmBackendLike) => SimdNormGelu | null = boundToHeap(simdNormGelu);

/**
 * Kernel names of worker/simd-norm-gelu.ts on the wasm backend (registered with the others):
 * - LayerNorm: inputs {x [rows, cols], gamma [cols], beta [cols]}, attrs {eps} -> [y, mean [rows], rstd [rows]]
 * - LayerNormGrad: {dy, x, gamma, mean, rstd} -> [dx, dgamma, dbeta]
 * - Gelu: {x} -> y; GeluGrad: {dy, x} -> dx (elementwise, any shape)
 * Only worker/model/layers.ts calls them, after wasmNormGeluActive() said yes.
 */
export const NORM_GELU_KERNELS = {
  layerNorm: 'CxrLayerNorm',
  layerNormGrad: 'CxrLayerNormGrad',
  gelu: 'CxrGelu',
  geluGrad: 'CxrGeluGrad',
} as const;

let normGeluOn = true;

/**
 * Turn the SIMD LayerNorm/GELU kernels off (false) or back on: layers.ts then builds both from
 * tfjs kernels as on every other backend. For benchmarks that compare the paths in one run, and
 * to rule the kernels out when chasing a numerical difference.
 */
export function setSimdNormGelu(on: boolean): void {
  normGeluOn = on;
}

/** Whether layers.ts's layerNorm and gelu run on the SIMD kernels now (active backend wasm, SIMD, switch on). */
export function wasmNormGeluActive(): boolean {
  return normGeluOn && wasmKernelsReady([NORM_GELU_KERNELS.gelu], normGeluFor);
}

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap };

/** The kernels for this call's backend; the callers checked wasmNormGeluActive() first. */
function normGeluKernels(args: KernelArgs): { k: SimdNormGelu; backend: WasmBackendLike; at: (t: Info) => number } {
  const backend = args.backend as WasmBackendLike;
  const k = normGeluFor(backend);
  if (!k) throw new Error('the SIMD LayerNorm/GELU kernels cannot run on this engine (check wasmNormGeluActive() first)');
  for (const t of Object.values(args.inputs) as Info[]) {
    if (t.dtype !== 'float32') throw new Error(`SIMD LayerNorm/GELU: inputs must be float32, got ${t.dtype}`);
  }
  return { k, backend, at: (t) => backend.getMemoryOffset(t.dataId) };
}

function layerNormKernel(args: KernelArgs): Info[] {
  const { k, backend, at } = normGeluKernels(args);
  const { x, gamma, beta } = args.inputs as { x: Info; gamma: Info; beta: Info };
  const { eps } = args.attrs as unknown as { eps: number };
  if (x.shape.length !== 2) throw new Error(`LayerNorm (wasm): x must be 2-D, got shape [${x.shape}]`);
  const [rows, cols] = x.shape as [number, number];
  for (const [name, t] of [
    ['gamma', gamma],
    ['beta', beta],
  ] as const) {
    if (t.shape.length !== 1 || t.shape[0] !== cols)
      throw new Error(`LayerNorm (wasm): ${name} must have shape [${cols}], got [${t.shape}]`);
  }
  const y = backend.makeOutput([rows, cols], 'float32');
  const mean = backend.makeOutput([rows], 'float32');
  const rstd = backend.makeOutput([rows], 'float32');
  k.layerNorm(at(x), at(gamma), at(beta), at(y), at(mean), at(rstd), rows, cols, eps);
  return [y, mean, rstd];
}

function layerNormGradKernel(args: KernelArgs): Info[] {
  const { k, backend, at } = normGeluKernels(args);
  const { dy, x, gamma, mean, rstd } = args.inputs as { dy: Info; x: Info; gamma: Info; mean: Info; rstd: Info };
  const [rows, cols] = x.shape as [number, number];
  if (
    !tf.util.arraysEqual(dy.shape, x.shape) ||
    !tf.util.arraysEqual(gamma.shape, [cols]) ||
    !tf.util.arraysEqual(mean.shape, [rows]) ||
    !tf.util.arraysEqual(rstd.shape, [rows])
  ) {
    throw new Error(
      `LayerNormGrad (wasm): shapes do not match (dy [${dy.shape}], x [${x.shape}], gamma [${gamma.shape}], mean [${mean.shape}], rstd [${rstd.shape}])`,
    );
  }
  const dx = backend.makeOutput([rows, cols], 'float32');
  const dgamma = backend.makeOutput([cols], 'float32');
  const dbeta = backend.makeOutput([cols], 'float32');
  k.layerNormGrad(at(dy), at(x), at(gamma), at(mean), at(rstd), at(dx), at(dgamma), at(dbeta), rows, cols);
  return [dx, dgamma, dbeta];
}

function geluKernel(args: KernelArgs): Info {
  const { k, backend, at } = normGeluKernels(args);
  const { x } = args.inputs as { x: Info };
  const y = backend.makeOutput([...x.shape], 'float32');
  k.gelu(at(x), at(y), tf.util.sizeFromShape(x.shape));
  return y;
}

function geluGradKernel(args: KernelArgs): Info {
  const { k, backend, at } = normGeluKernels(args);
  const { dy, x } = args.inputs as { dy: Info; x: Info };
  if (!tf.util.arraysEqual(dy.shape, x.shape)) throw new Error(`GeluGrad (wasm): dy [${dy.shape}] and x [${x.shape}] differ`);
  const dx = backend.makeOutput([...x.shape], 'float32');
  k.geluGrad(at(dy), at(x), at(dx), tf.util.sizeFromShape(x.shape));
  return dx;
}

/** The softmax-gradient kernel bound to this backend's heap, or null where it cannot run. */
const softmaxFor: (backend: WasmBackendLike) => SimdSoftmax | null = boundToHeap(simdSoftmax);

/**
 * The gradient of softmax over the last axis (./simd-softmax.ts), registered with the others:
 * inputs {dy, y} (the same shape, y the softmax's output) -> dx, with the bits of tfjs's
 * Multiply/Sum/Multiply/Sub on this backend. Only worker/model/layers.ts calls it, after
 * wasmSoftmaxGradActive() said yes.
 */
export const SOFTMAX_GRAD_KERNEL = 'CxrSoftmaxGrad';

let softmaxGradOn = true;

/** Turn the one-pass softmax gradient off (false) or back on: for benchmarks and to rule it out. */
export function setSimdSoftmaxGrad(on: boolean): void {
  softmaxGradOn = on;
}

/** Whether layers.ts's softmax takes its gradient from the one-pass kernel now (wasm, SIMD, switch on). */
export function wasmSoftmaxGradActive(): boolean {
  return softmaxGradOn && wasmKernelsReady([SOFTMAX_GRAD_KERNEL], softmaxFor);
}

function softmaxGradKernel(args: KernelArgs): Info {
  const { dy, y } = args.inputs as { dy: Info; y: Info };
  const backend = args.backend as WasmBackendLike;
  const k = softmaxFor(backend);
  if (!k) throw new Error('the SIMD softmax gradient cannot run on this engine (check wasmSoftmaxGradActive() first)');
  if (!tf.util.arraysEqual(dy.shape, y.shape) || y.shape.length === 0)
    throw new Error(`SoftmaxGrad (wasm): dy [${dy.shape}] and y [${y.shape}] must have one shape of rank >= 1`);
  if (dy.dtype !== 'float32' || y.dtype !== 'float32')
    throw new Error(`SoftmaxGrad (wasm): inputs must be float32, got ${dy.dtype}, ${y.dtype}`);
  const cols = y.shape[y.shape.length - 1]!;
  const dx = backend.makeOutput([...y.shape], 'float32');
  const at = (t: Info) => backend.getMemoryOffset(t.dataId);
  if (cols > 0) k.softmaxGrad(at(dy), at(y), at(dx), tf.util.sizeFromShape(y.shape) / cols, cols);
  return dx;
}

/**
 * Identity without a copy, as the cpu backend has it and as wasm's own Reshape already is: the
 * output shares the input's data under the backend's reference count. tfjs-backend-wasm 4.22
 * copies the whole tensor, and the engine runs Identity on every tensor a custom gradient saves
 * (~320 calls, ~37 ms of a tiny training step). Nothing here writes a tensor's memory in place on
 * wasm (tensor-storage.ts does that on cpu only), so sharing is safe; strings keep the copy.
 */
function sharedIdentity(copying: tf.KernelFunc) {
  return (args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs: tf.NamedAttrMap }): Info => {
    const { x } = args.inputs as { x: Info };
    if (x.dtype === 'string') return copying(args as unknown as Parameters<tf.KernelFunc>[0]) as Info;
    (args.backend as WasmBackendLike).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
}

/** The column-sum kernel bound to this backend's heap, or null where it cannot run. */
const colsumFor: (backend: WasmBackendLike) => SimdColsum | null = boundToHeap(simdColsum);

/**
 * Sum over leading axes (a bias's gradient: dY [rows, width] summed over its rows) on the column
 * sums of ./simd-colsum.ts, which give the same bits; tfjs-backend-wasm 4.22 reduces only
 * innermost axes and transposes the whole input first (~4 ms for [2080, 512]). Other reductions
 * keep the backend's kernel.
 */
function leadingAxesSum(plain: tf.KernelFunc) {
  return (args: KernelArgs): Info => {
    const { x } = args.inputs as { x: Info };
    const { axis, keepDims } = args.attrs as unknown as { axis: number | number[]; keepDims: boolean };
    const backend = args.backend as WasmBackendLike;
    const axes = [...tf.util.parseAxisParam(axis, x.shape)].sort((a, b) => a - b);
    const k = axes.length;
    const leading = k > 0 && k < x.shape.length && axes.every((a, i) => a === i);
    const kernel = leading && x.dtype === 'float32' ? colsumFor(backend) : null;
    if (!kernel) return plain(args as unknown as Parameters<tf.KernelFunc>[0]) as Info;
    const rows = tf.util.sizeFromShape(x.shape.slice(0, k));
    const kept = x.shape.slice(k);
    const out = backend.makeOutput(keepDims ? [...axes.map(() => 1), ...kept] : kept, 'float32');
    kernel.colsum(backend.getMemoryOffset(x.dataId), backend.getMemoryOffset(out.dataId), rows, tf.util.sizeFromShape(kept));
    return out;
  };
}

const BYTES_PER_ELEMENT: Partial<Record<tf.DataType, number>> = { float32: 4, int32: 4, bool: 1 };

/**
 * SplitV as one memmove per piece per index of the axes before the split axis (everything after it
 * is contiguous in input and piece alike). tfjs-backend-wasm 4.22 slices each piece with a
 * JavaScript `set(subarray())` per innermost row: splitting the attention's q, k, v apart
 * ([32, 12, 65, 32] on axis 1) took ~10 ms where the bytes move in well under one.
 */
function contiguousSplitV(plain: tf.KernelFunc) {
  return (args: KernelArgs): Info[] => {
    const { x } = args.inputs as { x: Info };
    const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
    const backend = args.backend as WasmBackendLike;
    const bytes = BYTES_PER_ELEMENT[x.dtype];
    const memory = backend.wasm?.asm?.memory as { buffer: ArrayBuffer } | undefined;
    if (bytes === undefined || !memory) return plain(args as unknown as Parameters<tf.KernelFunc>[0]) as Info[];
    const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
    const sizes = tf.backend_util.prepareSplitSize(x as unknown as tf.Tensor, numOrSizeSplits, ax);
    const outer = tf.util.sizeFromShape(x.shape.slice(0, ax));
    const inner = tf.util.sizeFromShape(x.shape.slice(ax + 1)) * bytes;
    const rowBytes = x.shape[ax]! * inner;
    const outs = sizes.map((s) =>
      backend.makeOutput(
        x.shape.map((d, i) => (i === ax ? s : d)),
        x.dtype,
      ),
    );
    // After the outputs are made: making one can grow the heap, which replaces its buffer.
    const heap = new Uint8Array(memory.buffer);
    const src = backend.getMemoryOffset(x.dataId);
    let begin = 0;
    for (const [p, s] of sizes.entries()) {
      const run = s * inner;
      if (run > 0) {
        const dst = backend.getMemoryOffset(outs[p]!.dataId);
        for (let o = 0; o < outer; o++) heap.copyWithin(dst + o * run, src + o * rowBytes + begin, src + o * rowBytes + begin + run);
      }
      begin += run;
    }
    return outs;
  };
}

/** The strided row copies bound to this backend's heap, or null where they cannot run. */
const transposeFor: (backend: WasmBackendLike) => SimdTranspose | null = boundToHeap(simdTranspose);

let transposeOn = true;

/**
 * Turn the row-copy Transpose off (false: every perm on the backend's own kernel) or back on. For
 * benchmarks that compare the paths in one run, and to rule the kernel out.
 */
export function setSimdTranspose(on: boolean): void {
  transposeOn = on;
}

/** The swap the rows kernel would make for this transpose, or null where the backend's kernel runs. */
function rowSwap(shape: readonly number[], perm: readonly number[], dtype: tf.DataType): ReturnType<typeof adjacentSwap> {
  return transposeOn && BYTES_PER_ELEMENT[dtype] === 4 ? adjacentSwap(shape, perm) : null;
}

/** Which kernel serves Transpose of this shape, perm and dtype on the active wasm backend: the row copies or the backend's own. */
export function wasmTransposePath(shape: readonly number[], perm: readonly number[], dtype: tf.DataType): 'rows' | 'backend' {
  if (tf.getBackend() !== 'wasm') throw new Error(`wasmTransposePath: the active backend is ${tf.getBackend()}, not wasm`);
  return rowSwap(shape, perm, dtype) && transposeFor(tf.backend() as unknown as WasmBackendLike) ? 'rows' : 'backend';
}

/**
 * Transpose on ./simd-transpose.ts where the perm swaps two adjacent groups of axes and keeps the
 * last axis last (the attention's [0, 2, 1, 3], the stem's [0, 1, 3, 2, 4]): whole rows move as
 * v128 copies (tfjs-backend-wasm 4.22's kernel is generic over the axes: ~1.3-1.5x the time at
 * the attention's shapes, bench/transpose.ts). Other perms, other dtypes and
 * engines without SIMD keep the backend's kernel. A permutation moves bits: the same result.
 */
function rowTranspose(plain: tf.KernelFunc) {
  return (args: KernelArgs): Info => {
    const { x } = args.inputs as { x: Info };
    const { perm } = args.attrs as unknown as { perm: number[] };
    const backend = args.backend as WasmBackendLike;
    const swap = rowSwap(x.shape, perm, x.dtype);
    const k = swap ? transposeFor(backend) : null;
    if (!swap || !k) return plain(args as unknown as Parameters<tf.KernelFunc>[0]) as Info;
    const out = backend.makeOutput(
      perm.map((p) => x.shape[p]!),
      x.dtype,
    );
    const { outer, x: nx, y: ny, inner } = swap;
    if (outer * nx * ny * inner === 0) return out;
    // Output rows (o, a < ny, b < nx) in order; input row (o, b, a).
    const plane = nx * ny * inner * 4;
    k.rows(
      backend.getMemoryOffset(x.dataId),
      backend.getMemoryOffset(out.dataId),
      outer,
      ny,
      nx,
      inner,
      plane,
      inner * 4,
      ny * inner * 4,
      plane,
      nx * inner * 4,
      inner * 4,
    );
    return out;
  };
}

/**
 * The attention's head split on the wasm backend: inputs {x [batch * tokens, 3 * heads * d]} (the
 * qkv projection, q, k, v each heads * d wide), attrs {batch, heads, scale} -> [q * scale, k, v],
 * each [batch * heads, tokens, d]. It is reshape [batch, tokens, 3 * heads, d], transpose
 * [0, 2, 1, 3], split in three on axis 1, reshape, and q times scale (an f32 Multiply), moved in
 * one pass with the same bits. Its gradient (CxrAttentionHeadsGrad: {dq, dk, dv} -> dx) is the
 * reverse, dq times scale, which is what tfjs's Multiply, Concat and Transpose gradients compute.
 * Only worker/model/layers.ts calls it, after wasmAttentionHeadsActive() said yes.
 */
export const ATTENTION_HEADS_KERNELS = { split: 'CxrAttentionHeads', merge: 'CxrAttentionHeadsGrad' } as const;

interface HeadsAttrs {
  batch: number;
  heads: number;
  scale: number;
}

let headsOn = true;

/** Turn the fused head split/merge off (false: tfjs's transpose, split and multiply) or back on. */
export function setSimdAttentionHeads(on: boolean): void {
  headsOn = on;
}

/** Whether layers.ts's attentionHeads runs on the fused kernels now (wasm, SIMD, switch on). */
export function wasmAttentionHeadsActive(): boolean {
  return headsOn && wasmKernelsReady([ATTENTION_HEADS_KERNELS.split], transposeFor);
}

/** [batch, tokens, heads, d] of the qkv projection `x` [batch * tokens, 3 * heads * d], or an error naming what does not fit. */
function headsGeometry(x: readonly number[], { batch, heads }: HeadsAttrs): [number, number, number, number] {
  const [rows, cols] = x;
  if (x.length !== 2 || !(batch > 0) || !(heads > 0) || rows! % batch !== 0 || cols! % (3 * heads) !== 0) {
    throw new Error(`AttentionHeads (wasm): x [${x}] is not [batch * tokens, 3 * heads * d] for batch ${batch}, heads ${heads}`);
  }
  return [batch, rows! / batch, heads, cols! / (3 * heads)];
}

function boundHeads(args: KernelArgs): { k: SimdTranspose; backend: WasmBackendLike; at: (t: Info) => number } {
  const backend = args.backend as WasmBackendLike;
  const k = transposeFor(backend);
  if (!k) throw new Error('the attention head kernels cannot run on this engine (check wasmAttentionHeadsActive() first)');
  for (const t of Object.values(args.inputs) as Info[]) {
    if (t.dtype !== 'float32') throw new Error(`AttentionHeads (wasm): inputs must be float32, got ${t.dtype}`);
  }
  return { k, backend, at: (t) => backend.getMemoryOffset(t.dataId) };
}

function attentionHeadsKernel(args: KernelArgs): Info[] {
  const { k, backend, at } = boundHeads(args);
  const { x } = args.inputs as { x: Info };
  const attrs = args.attrs as unknown as HeadsAttrs;
  const [b, t, h, d] = headsGeometry(x.shape, attrs);
  const outs = [0, 1, 2].map(() => backend.makeOutput([b * h, t, d], 'float32'));
  if (b * t * h * d === 0) return outs;
  // Output rows (batch o, head a, token c) of d values, from input row (o, c) at column (piece, a).
  const strides = [t * 3 * h * d * 4, d * 4, 3 * h * d * 4, h * t * d * 4, t * d * 4, d * 4] as const;
  outs.forEach((out, piece) => {
    const src = at(x) + piece * h * d * 4;
    if (piece === 0) k.rowsScaled(src, at(out), b, h, t, d, ...strides, attrs.scale);
    else k.rows(src, at(out), b, h, t, d, ...strides);
  });
  return outs;
}

function attentionHeadsGradKernel(args: KernelArgs): Info {
  const { k, backend, at } = boundHeads(args);
  const { dq, dk, dv } = args.inputs as { dq: Info; dk: Info; dv: Info };
  const attrs = args.attrs as unknown as HeadsAttrs;
  const { batch, heads } = attrs;
  const [tokens, d] = [dq.shape[1]!, dq.shape[2]!];
  for (const g of [dq, dk, dv]) {
    if (!tf.util.arraysEqual(g.shape, [batch * heads, tokens, d]))
      throw new Error(`AttentionHeadsGrad (wasm): dq, dk, dv must be [${batch * heads},${tokens},${d}], got [${g.shape}]`);
  }
  const dx = backend.makeOutput([batch * tokens, 3 * heads * d], 'float32');
  if (batch * tokens * heads * d === 0) return dx;
  // Output rows (batch o, token a, head c) at column (piece, c), from input row (o, c, a).
  const strides = [heads * tokens * d * 4, d * 4, tokens * d * 4, tokens * 3 * heads * d * 4, 3 * heads * d * 4, d * 4] as const;
  [dq, dk, dv].forEach((g, piece) => {
    const dst = at(dx) + piece * heads * d * 4;
    if (piece === 0) k.rowsScaled(at(g), dst, batch, tokens, heads, d, ...strides, attrs.scale);
    else k.rows(at(g), dst, batch, tokens, heads, d, ...strides);
  });
  return dx;
}

let registered = false;

/** Register the missing kernels on the wasm backend (idempotent; kernels wasm gains later win). */
export function registerWasmGradientKernels(): void {
  if (registered) return;
  registered = true;
  const add = (kernelName: string, kernelFunc: tf.KernelFunc) => {
    if (!tf.getKernel(kernelName, 'wasm')) tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc });
  };
  add('Conv2DBackpropFilter', conv2DBackpropFilter as unknown as tf.KernelFunc);
  add('UnsortedSegmentSum', unsortedSegmentSum as unknown as tf.KernelFunc);
  add(NORM_GELU_KERNELS.layerNorm, layerNormKernel as unknown as tf.KernelFunc);
  add(NORM_GELU_KERNELS.layerNormGrad, layerNormGradKernel as unknown as tf.KernelFunc);
  add(NORM_GELU_KERNELS.gelu, geluKernel as unknown as tf.KernelFunc);
  add(NORM_GELU_KERNELS.geluGrad, geluGradKernel as unknown as tf.KernelFunc);
  add(DENSE_KERNEL, denseKernel as unknown as tf.KernelFunc);
  add(MATMUL_MUL_KERNEL, matMulMulKernel as unknown as tf.KernelFunc);
  add(SOFTMAX_GRAD_KERNEL, softmaxGradKernel as unknown as tf.KernelFunc);
  add(ATTENTION_HEADS_KERNELS.split, attentionHeadsKernel as unknown as tf.KernelFunc);
  add(ATTENTION_HEADS_KERNELS.merge, attentionHeadsGradKernel as unknown as tf.KernelFunc);
  tf.registerGradient({
    kernelName: ATTENTION_HEADS_KERNELS.split,
    gradFunc: (dy, _saved, attrs) => {
      const [dq, dk, dv] = dy as tf.Tensor[];
      return {
        x: () =>
          tf
            .engine()
            .runKernel(ATTENTION_HEADS_KERNELS.merge, { dq: dq!, dk: dk!, dv: dv! }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor,
      };
    },
  });
  // Wrap the backend's own kernel, which stays the fallback.
  const replace = (kernelName: string, wrap: (plain: tf.KernelFunc) => unknown) => {
    const k = tf.getKernel(kernelName, 'wasm');
    if (!k) return;
    tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: wrap(k.kernelFunc) as tf.KernelFunc });
  };
  replace('Identity', sharedIdentity);
  replace('Sum', leadingAxesSum);
  replace('SplitV', contiguousSplitV);
  replace('Transpose', rowTranspose);
  replace('BatchMatMul', (plain) => simdBatchedMatMul(untransposedBatchMatMul(plain)));
}
