import * as tf from '@tensorflow/tfjs';
import { BYTES_PER_ELEMENT, type Info, type KernelArgs, type WasmBackendLike, type WrappingKernelConfig } from './wasm-backend.js';

/**
 * SplitV as one memmove per piece per index of the axes before the split axis (everything after it
 * is contiguous in input and piece alike). tfjs-backend-wasm 4.22 slices each piece with a
 * JavaScript `set(subarray())` per innermost row, which made splitting the attention's q, k, v
 * apart cost many times what moving its bytes does.
 */
function contiguousSplitV(plain: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs): Info[] => {
    const { x } = args.inputs as { x: Info };
    const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
    const backend = args.backend as WasmBackendLike;
    const bytes = BYTES_PER_ELEMENT[x.dtype];
    const memory = backend.wasm?.asm?.memory as { buffer: ArrayBuffer } | undefined;
    if (bytes === undefined || !memory) return plain(args) as Info[];
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

export const splitVConfig: WrappingKernelConfig = { kernelName: 'SplitV', backendName: 'wasm', wrap: contiguousSplitV };
