import { addTo, assembleModule, Body, instantiateOwnMemory, whileLoop } from '../wasm-asm.js';

/**
 * The fp32 add of the reduce-scatter, dst[i] = dst[i] + src[i], as a WebAssembly SIMD kernel.
 *
 * V8 does not vectorise the JavaScript loop, which took a large share of a rank's main thread in
 * an all-reduce. The kernel adds four lanes per instruction (f32x4.add) in a small wasm memory:
 * each piece of the chunk is copied in (the received bytes and the destination), added, and copied
 * back; the pieces fit in L2, so the copies are cheap and the whole is faster than the loop.
 * f32x4.add is IEEE binary32 addition rounded to nearest, element by element, the same operation
 * as the loop (a double-precision sum of two fp32 values rounded to fp32 is the correctly rounded
 * fp32 sum), so results are bit-identical to it for every non-NaN input (a NaN stays a NaN; its
 * payload bits may differ).
 *
 * The module is assembled by ../wasm-asm.ts (no toolchain in the build). Its one function,
 * add(d, s, n), adds `n` bytes (a multiple of 16) at s into d; the last 0-3 elements of a chunk
 * are added in JavaScript.
 */

function addBody(): Body {
  const f = new Body(['i32', 'i32', 'i32']);
  const [d, s, n] = [0, 1, 2];
  const p = f.local('i32');
  whileLoop(
    f,
    () => f.get(p).get(n).i32LtU(),
    () => {
      f.get(d).get(p).i32Add(); // where the sum goes
      f.get(d).get(p).i32Add().v128Load();
      f.get(s).get(p).i32Add().v128Load();
      f.f32x4Add().v128Store();
      addTo(f, p, 16);
    },
  );
  return f;
}

const MODULE = assembleModule([{ name: 'add', body: addBody() }]);

/** Bytes per piece: a destination and a source piece together stay well inside L2. */
const PIECE_BYTES = 256 << 10;
const D = 0;
const S = PIECE_BYTES;

interface Kernel {
  add(d: number, s: number, n: number): void;
  bytes: Uint8Array;
  floats: Float32Array;
}

function instantiate(): Kernel | null {
  const own = instantiateOwnMemory(MODULE, 2 * PIECE_BYTES);
  return (
    own && {
      add: own.exports.add as (d: number, s: number, n: number) => void,
      bytes: new Uint8Array(own.buffer),
      floats: new Float32Array(own.buffer),
    }
  );
}

const kernel = instantiate();

/** Whether the SIMD kernel runs (false: the JavaScript loop, on engines without wasm SIMD). */
export const simdAddAvailable = kernel !== null;

/** dst[i] = dst[i] + src[i] in fp32, element by element (the plain loop, and the reference). */
export function addF32Loop(dst: Float32Array, src: Float32Array): void {
  const n = dst.length;
  for (let i = 0; i < n; i++) dst[i] = dst[i]! + src[i]!;
}

/**
 * dst[i] = dst[i] + src[i] in fp32, where `src` holds dst.length little-endian fp32 values at any
 * byte offset (a received payload need not be 4-byte aligned).
 */
export function addF32(dst: Float32Array, src: Uint8Array): void {
  if (src.byteLength !== dst.byteLength) throw new RangeError(`addF32: ${src.byteLength} source bytes for ${dst.length} elements`);
  if (!kernel) {
    const aligned = src.byteOffset % 4 === 0 ? src : Uint8Array.from(src);
    return addF32Loop(dst, new Float32Array(aligned.buffer, aligned.byteOffset, dst.length));
  }
  addPieces(dst, (into, at) => into.set(src.subarray(at, at + into.length)));
}

/**
 * dst[i] = dst[i] + src[i] in fp32, where `fill(into, at)` writes the source's bytes at..at+into.length
 * into `into` (for example a read from a file straight into the kernel's memory, saving a copy).
 */
export function addF32From(dst: Float32Array, fill: (into: Uint8Array, at: number) => void): void {
  if (!kernel) {
    const src = new Uint8Array(dst.byteLength);
    for (let at = 0; at < src.length; at += PIECE_BYTES) fill(src.subarray(at, Math.min(src.length, at + PIECE_BYTES)), at);
    return addF32Loop(dst, new Float32Array(src.buffer));
  }
  addPieces(dst, fill);
}

function addPieces(dst: Float32Array, fill: (into: Uint8Array, at: number) => void): void {
  const { add, bytes, floats } = kernel!;
  const out = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
  for (let at = 0; at < out.length; at += PIECE_BYTES) {
    const len = Math.min(PIECE_BYTES, out.length - at);
    fill(bytes.subarray(S, S + len), at);
    bytes.set(out.subarray(at, at + len), D);
    const vec = len & ~15;
    add(D, S, vec);
    for (let i = vec >> 2, e = len >> 2; i < e; i++) floats[(D >> 2) + i] = floats[(D >> 2) + i]! + floats[(S >> 2) + i]!;
    out.set(bytes.subarray(D, D + len), at);
  }
}
