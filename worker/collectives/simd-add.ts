/**
 * The fp32 add of the reduce-scatter, dst[i] = dst[i] + src[i], as a WebAssembly SIMD kernel.
 *
 * V8 does not vectorise the JavaScript loop; it ran at about 3.5 ns per element here, 40% of a
 * rank's main thread in a 64 MiB all-reduce. The kernel adds four lanes per instruction
 * (f32x4.add) in a small wasm memory: each piece of the chunk is copied in (the received bytes
 * and the destination), added, and copied back; the pieces fit in L2, so the copies are cheap and
 * the whole is about twice as fast as the loop. f32x4.add is IEEE binary32 addition rounded to
 * nearest, element by element, the same operation as the loop (a double-precision sum of two
 * fp32 values rounded to fp32 is the correctly rounded fp32 sum), so results are bit-identical to
 * it for every non-NaN input (a NaN stays a NaN; its payload bits may differ).
 *
 * The module is assembled here from its bytes (no toolchain in the build). Its one function:
 *   (func (export "add") (param $d i32) (param $s i32) (param $n i32) (local $p i32)
 *     (block (loop
 *       (br_if 1 (i32.ge_u (local.get $p) (local.get $n)))
 *       (v128.store (i32.add (local.get $d) (local.get $p))
 *         (f32x4.add (v128.load (i32.add (local.get $d) (local.get $p)))
 *                    (v128.load (i32.add (local.get $s) (local.get $p)))))
 *       (local.set $p (i32.add (local.get $p) (i32.const 16)))
 *       (br 0))))
 * with `n` a byte count that is a multiple of 16; the last 0-3 elements are added in JavaScript.
 */

// prettier-ignore
const BODY = [
  0x01, 0x01, 0x7f, // one local i32 ($p)
  0x02, 0x40, 0x03, 0x40, // block, loop
  0x20, 3, 0x20, 2, 0x4f, 0x0d, 1, // br_if 1 (p >= n)
  0x20, 0, 0x20, 3, 0x6a, // d + p (store address)
  0x20, 0, 0x20, 3, 0x6a, 0xfd, 0x00, 4, 0, // v128.load (d + p)
  0x20, 1, 0x20, 3, 0x6a, 0xfd, 0x00, 4, 0, // v128.load (s + p)
  0xfd, 0xe4, 0x01, // f32x4.add
  0xfd, 0x0b, 4, 0, // v128.store
  0x20, 3, 0x41, 0x10, 0x6a, 0x21, 3, // p += 16
  0x0c, 0, 0x0b, 0x0b, 0x0b, // br 0, end loop, end block, end func
];

// prettier-ignore
const MODULE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // \0asm, version 1
  0x01, 7, 1, 0x60, 3, 0x7f, 0x7f, 0x7f, 0, // type section: (i32, i32, i32) -> ()
  0x02, 8, 1, 1, 0x65, 1, 0x6d, 0x02, 0x00, 1, // import section: memory "e" "m", at least 1 page
  0x03, 2, 1, 0, // function section: one function of type 0
  0x07, 7, 1, 3, 0x61, 0x64, 0x64, 0x00, 0, // export section: "add" = function 0
  0x0a, BODY.length + 2, 1, BODY.length, ...BODY, // code section
]);

// The project's lib settings carry no WebAssembly types; this is the part used here.
declare const WebAssembly:
  | {
      validate(bytes: Uint8Array): boolean;
      Memory: new (d: { initial: number }) => { buffer: ArrayBuffer };
      Module: new (bytes: Uint8Array) => object;
      Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
    }
  | undefined;

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
  if (typeof WebAssembly === 'undefined' || !WebAssembly.validate(MODULE)) return null;
  const memory = new WebAssembly.Memory({ initial: (2 * PIECE_BYTES) / 65536 });
  const instance = new WebAssembly.Instance(new WebAssembly.Module(MODULE), { e: { m: memory } });
  return {
    add: instance.exports.add as (d: number, s: number, n: number) => void,
    bytes: new Uint8Array(memory.buffer),
    floats: new Float32Array(memory.buffer),
  };
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
