import * as tf from '@tensorflow/tfjs';

/** The parts of tfjs-backend-wasm's backend object (opaque to tfjs's types) that the kernels use. */
export interface WasmBackendLike {
  disposeData(dataId: object, force?: boolean): boolean;
  incRef(dataId: object): void;
  makeOutput(shape: number[], dtype: tf.DataType): Info;
  /** Byte offset of a tensor's values in the backend's heap. */
  getMemoryOffset(dataId: object): number;
  /** The Emscripten module; `asm.memory` is its exported heap. */
  wasm: { asm?: { memory?: unknown } } | null;
}

export type Info = tf.TensorInfo;
export type KernelArgs = Parameters<tf.KernelFunc>[0];

/**
 * A kernel tfjs-backend-wasm has, replaced by one that keeps the backend's own as its fallback:
 * `wrap` is given that kernel's function when the replacement is registered.
 */
export interface WrappingKernelConfig {
  kernelName: string;
  backendName: 'wasm';
  wrap(plain: tf.KernelFunc): tf.KernelFunc;
}

/** Bytes per value of the dtypes the copying kernels move (strings have none). */
export const BYTES_PER_ELEMENT: Partial<Record<tf.DataType, number>> = { float32: 4, int32: 4, bool: 1 };

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

/**
 * Run `body`, which calls the backend's kernels by name through `run`; every intermediate except
 * the returned one is freed.
 */
export function withScratch(backend: WasmBackendLike, body: (run: Run) => Info): Info {
  const scratch: Info[] = [];
  const out = body(runner(backend, scratch));
  for (const t of scratch) if (t !== out) backend.disposeData(t.dataId);
  return out;
}

/**
 * Whether a fused path can run now: the active backend is wasm, the kernels `names` are
 * registered on it, and `moduleFor` could build their SIMD module in its memory.
 */
export function wasmKernelsReady(names: readonly string[], moduleFor: (b: WasmBackendLike) => unknown): boolean {
  if (tf.getBackend() !== 'wasm' || names.some((k) => !tf.getKernel(k, 'wasm'))) return false;
  return moduleFor(tf.backend() as unknown as WasmBackendLike) !== null;
}
