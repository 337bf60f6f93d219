import * as tf from '@tensorflow/tfjs';

/**
 * Direct access to a float32 tensor's storage on the backends that keep it in JavaScript-visible
 * memory (wasm: its heap; cpu: a typed array), so that the training step can write parameters into
 * the variables and read gradients out of the tape's tensors without a new tensor, a new
 * ArrayBuffer or a copy per parameter per step. Where a backend does not expose its storage
 * (tfjs-node), `storageOf` answers null and callers take the ordinary tfjs path.
 *
 * A view is valid until the next tfjs call (the wasm heap can grow, which replaces its buffer):
 * take it, copy, drop it. Reading is safe on both backends. Writing is not on wasm: a step after
 * writing the variables' heap memory in place computed something else than a model built from
 * the same values (test/tensor-storage.test.ts catches it). The backend keeps state derived from
 * a tensor under its id (its XNNPACK operators cache packed weights that way, the likely cause),
 * which only a new tensor, assigned, refreshes. So variables are written in place on cpu only.
 */

interface WasmBackendLike {
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}
interface CpuBackendLike {
  data: { get(dataId: tf.DataId): { values?: unknown } | undefined };
}

/** The float32 storage of `t` as a view, or null where the active backend does not expose it. */
export function storageOf(t: tf.Tensor): Float32Array | null {
  if (t.dtype !== 'float32' || t.isDisposed) return null;
  const name = tf.getBackend();
  const backend = tf.backend() as unknown;
  if (name === 'wasm') {
    const view = (backend as WasmBackendLike).typedArrayFromHeap(t);
    return view instanceof Float32Array ? view : null;
  }
  if (name === 'cpu') {
    const values = (backend as CpuBackendLike).data.get(t.dataId)?.values;
    return values instanceof Float32Array && values.length === t.size ? values : null;
  }
  return null;
}

/** Copies `t`'s values into `out` at `offset` (through its storage where the backend exposes it, else dataSync). */
export function readInto(t: tf.Tensor, out: Float32Array, offset: number): void {
  const view = storageOf(t);
  out.set(view ?? (t.dataSync() as Float32Array), offset);
}

/**
 * Whether the active backend keeps tensors in memory the process reads directly (wasm's heap,
 * cpu's arrays). Elsewhere (webgpu: GPU memory) a read-back or an upload is a transfer with a
 * fixed cost, so a whole vector moves once instead of once per tensor.
 */
export function hostResident(): boolean {
  const name = tf.getBackend();
  return name === 'wasm' || name === 'cpu';
}

/**
 * Whether dataSync works on the active backend. tfjs-backend-webgpu reads synchronously only in a
 * browser (through OffscreenCanvas); in Node every read from the GPU is `await data()`.
 */
export function readsSynchronously(): boolean {
  return tf.getBackend() !== 'webgpu';
}

/**
 * `parts` (each null for zeros, or a tensor of that size) laid end to end into `out` from offset 0.
 * Host-resident backends copy each tensor's storage; elsewhere the parts are concatenated where
 * they live and read back in one transfer.
 */
export async function readConcatenated(parts: readonly { tensor: tf.Tensor | null; size: number }[], out: Float32Array): Promise<void> {
  const total = parts.reduce((a, p) => a + p.size, 0);
  if (total !== out.length) throw new Error(`readConcatenated: ${total} values for a buffer of ${out.length}`);
  if (hostResident()) {
    let at = 0;
    for (const p of parts) {
      if (p.tensor) readInto(p.tensor, out, at);
      else out.fill(0, at, at + p.size);
      at += p.size;
    }
    return;
  }
  const flat = tf.tidy(() => tf.concat(parts.map((p) => (p.tensor ? tf.reshape(p.tensor, [-1]) : tf.zeros([p.size])))));
  try {
    out.set((await flat.data()) as Float32Array);
  } finally {
    flat.dispose();
  }
}

/**
 * Overwrites `variables` from `values` laid end to end in their order. Host-resident backends
 * write each variable (overwriteVariable); elsewhere the vector is uploaded once and each variable
 * gets its slice of it where the data lives.
 */
export function assignConcatenated(variables: readonly tf.Variable[], values: Float32Array): void {
  const total = variables.reduce((a, v) => a + v.size, 0);
  if (total !== values.length) throw new Error(`assignConcatenated: ${values.length} values for variables of ${total}`);
  if (hostResident()) {
    let at = 0;
    for (const v of variables) {
      overwriteVariable(v, values.subarray(at, at + v.size));
      at += v.size;
    }
    return;
  }
  tf.tidy(() => {
    const all = tf.tensor1d(values);
    let at = 0;
    for (const v of variables) {
      v.assign(tf.reshape(tf.slice(all, at, v.size), v.shape));
      at += v.size;
    }
  });
}

/**
 * Overwrites variable `v` with `values` (its size). On the cpu backend in place when the variable
 * alone holds its data (refcount 1, so no other tensor sees the write); otherwise a new tensor is
 * assigned (wasm copies `values` into its heap). The cpu backend keeps the very array a tensor is
 * made from, so there the new tensor gets a copy: the variable must never alias the caller's vector.
 */
export function overwriteVariable(v: tf.Variable, values: Float32Array): void {
  if (values.length !== v.size) throw new Error(`overwriteVariable: ${values.length} values for ${v.name} of size ${v.size}`);
  const view = soleStorage(v);
  if (view) {
    view.set(values);
    return;
  }
  const t = tf.tensor(tf.getBackend() === 'cpu' ? values.slice() : values, v.shape);
  v.assign(t);
  t.dispose();
}

function soleStorage(v: tf.Variable): Float32Array | null {
  if (tf.getBackend() !== 'cpu') return null;
  const backend = tf.backend() as unknown as { refCount?(dataId: tf.DataId): number };
  if (typeof backend.refCount !== 'function' || backend.refCount(v.dataId) !== 1) return null;
  return storageOf(v);
}
