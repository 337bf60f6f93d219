import { addTo, assembleModule, Body, countdown, instantiateWith, wasmApi } from '../wasm-asm.js';

/**
 * The gradient of softmax over the last axis in one WebAssembly SIMD pass per row, for
 * tfjs-backend-wasm: tfjs builds it from four kernels (Multiply, Sum, Multiply, Sub), each a full
 * pass over [batch*heads, tokens, tokens] that allocates its output.
 *
 * The math is tfjs's Softmax gradient, operation for operation, in f32:
 * p = dy*y; s = sum over the row of p; dx = p - s*y. The row sum runs in increasing index from 0,
 * one element at a time: the order the backend's Sum uses for an innermost axis, so the result
 * has the bits of the four kernels it replaces. The two elementwise passes run four lanes wide
 * (each lane the same f32 operations), the row's last cols % 4 one at a time.
 */

const I = 'i32';
const F = 'f32';
const V = 'v128';

/** softmaxGrad(dy, y, dx, rows, cols): byte offsets of three [rows, cols] matrices. */
function softmaxGradBody(): Body {
  const f = new Body([I, I, I, I, I]);
  const [dy, y, dx, rows, cols] = [0, 1, 2, 3, 4];
  const r = f.local(I);
  const count = f.local(I);
  const nv = f.local(I);
  const tail = f.local(I);
  const pdy = f.local(I);
  const py = f.local(I);
  const s = f.local(F);
  const yS = f.local(F);
  const sV = f.local(V);
  const yV = f.local(V);
  f.get(cols).i32Const(2).i32ShrU().set(nv);
  f.get(cols).i32Const(3).i32And().set(tail);
  f.get(rows).set(r);
  countdown(f, r, () => {
    // s = sum of dy*y over the row, in order
    f.f32Const0().set(s);
    f.get(dy).set(pdy);
    f.get(y).set(py);
    f.get(cols).set(count);
    countdown(f, count, () => {
      f.get(s).get(pdy).f32Load().get(py).f32Load().f32Mul().f32Add().set(s);
      addTo(f, pdy, 4);
      addTo(f, py, 4);
    });
    f.get(s).f32x4Splat().set(sV);
    // dx = dy*y - s*y
    f.get(nv).set(count);
    countdown(f, count, () => {
      f.get(dx);
      f.get(y).v128Load().set(yV);
      f.get(dy).v128Load().get(yV).f32x4Mul();
      f.get(sV).get(yV).f32x4Mul();
      f.f32x4Sub().v128Store();
      addTo(f, dy, 16);
      addTo(f, y, 16);
      addTo(f, dx, 16);
    });
    f.get(tail).set(count);
    countdown(f, count, () => {
      f.get(dx);
      f.get(y).f32Load().set(yS);
      f.get(dy).f32Load().get(yS).f32Mul();
      f.get(s).get(yS).f32Mul();
      f.f32Sub().f32Store();
      addTo(f, dy, 4);
      addTo(f, y, 4);
      addTo(f, dx, 4);
    });
  });
  return f;
}

const MODULE = assembleModule([{ name: 'softmaxGrad', body: softmaxGradBody() }]);

/** Whether this engine can run the module (wasm SIMD). */
export const simdSoftmaxSupported = wasmApi?.validate(MODULE) ?? false;

export interface SimdSoftmax {
  /** dx = dy*y - (sum over the row of dy*y)*y for each of `rows` rows of `cols`; byte offsets. */
  softmaxGrad(dy: number, y: number, dx: number, rows: number, cols: number): void;
}

/**
 * The kernel bound to `memory` (the tfjs wasm backend's heap), or null where it cannot run: no
 * wasm SIMD, or a memory this module cannot import (the threaded backend's shared memory).
 */
export function simdSoftmax(memory: unknown): SimdSoftmax | null {
  return instantiateWith(MODULE, memory) as unknown as SimdSoftmax | null;
}
