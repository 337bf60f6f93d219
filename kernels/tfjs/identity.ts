import type * as tf from '@tensorflow/tfjs';
import type { Info, KernelArgs, WasmBackendLike, WrappingKernelConfig } from './wasm-backend.js';

/**
 * Identity without a copy, as the cpu backend has it and as wasm's own Reshape already is: the
 * output shares the input's data under the backend's reference count. tfjs-backend-wasm 4.22
 * copies the whole tensor, and the engine runs Identity on every tensor a custom gradient saves
 * (docs/performance.md, "Identity without a copy"). Nothing here writes a tensor's memory in place
 * on wasm (tensor-storage.ts does that on cpu only), so sharing is safe; strings keep the copy.
 */
function sharedIdentity(copying: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs): Info => {
    const { x } = args.inputs as { x: Info };
    if (x.dtype === 'string') return copying(args) as Info;
    (args.backend as WasmBackendLike).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
}

export const identityConfig: WrappingKernelConfig = { kernelName: 'Identity', backendName: 'wasm', wrap: sharedIdentity };
