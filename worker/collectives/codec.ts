/**
 * Number formats on the wire. Gradients may travel as fp16 or bf16 to halve the bytes; sums are
 * always formed in fp32 (decode, add, re-encode), rounding to nearest even at every encode.
 * fp16 overflows to +-Infinity above 65504 and loses values below 2^-24; bf16 keeps fp32's range
 * with 8 bits of mantissa, so it is the safer choice for raw gradients.
 */
import { addF32 } from '../../kernels/simd/add.js';

export type Wire = 'fp32' | 'fp16' | 'bf16';

export const WIRES: readonly Wire[] = ['fp32', 'fp16', 'bf16'];
export const wireCode: Record<Wire, number> = { fp32: 0, fp16: 1, bf16: 2 };
export const wireOfCode: readonly Wire[] = ['fp32', 'fp16', 'bf16'];
export const wireBytes: Record<Wire, number> = { fp32: 4, fp16: 2, bf16: 2 };

/** fp32 bit pattern -> fp16 bit pattern, round to nearest, ties to even; NaN stays NaN. */
export function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa lands in the exponent, which is the correctly rounded result
  // (up to and including overflow to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;
  return sign | h;
}

/** fp16 bit pattern -> value, for all 65536 patterns (the decode table). */
const F16_TABLE: Float32Array = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
})();

export function f16ToF32(h: number): number {
  return F16_TABLE[h & 0xffff]!;
}

/** fp32 bit pattern -> bf16 bit pattern, round to nearest, ties to even; NaN stays NaN. */
export function f32BitsToBf16(x: number): number {
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encodes `src` into a new buffer in the wire format (fp32: a copy). */
export function encode(src: Float32Array, wire: Wire): Buffer {
  const out = Buffer.allocUnsafe(src.length * wireBytes[wire]);
  if (wire === 'fp32') {
    out.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
    return out;
  }
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const dst = new Uint16Array(out.buffer, out.byteOffset, src.length);
  if (wire === 'fp16') for (let i = 0; i < bits.length; i++) dst[i] = f32BitsToF16(bits[i]!);
  else for (let i = 0; i < bits.length; i++) dst[i] = f32BitsToBf16(bits[i]!);
  return out;
}

/** Rounds `x` in place to the values the wire format can carry (fp32: unchanged). */
export function quantize(x: Float32Array, wire: Wire): void {
  if (wire === 'fp32') return;
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  if (wire === 'fp16') for (let i = 0; i < bits.length; i++) x[i] = F16_TABLE[f32BitsToF16(bits[i]!)]!;
  else for (let i = 0; i < bits.length; i++) bits[i] = f32BitsToBf16(bits[i]!) << 16;
}

/**
 * A typed view of a received payload. Large ZeroMQ messages are their own allocation (aligned);
 * small ones can sit at any offset in a shared receive buffer, and those are copied to an aligned
 * buffer first.
 */
function aligned(payload: Uint8Array, elemBytes: number): Uint8Array {
  if (payload.byteOffset % elemBytes === 0) return payload;
  const copy = new Uint8Array(payload.byteLength);
  copy.set(payload);
  return copy;
}

/** dst[i] = dst[i] + decode(payload)[i], in fp32 (the add of the reduce-scatter). */
export function decodeAdd(dst: Float32Array, payload: Uint8Array, wire: Wire): void {
  const n = dst.length;
  if (wire === 'fp32') return addF32(dst, payload.subarray(0, n * 4));
  const p = aligned(payload, wireBytes[wire]);
  const src = new Uint16Array(p.buffer, p.byteOffset, n);
  if (wire === 'fp16') {
    for (let i = 0; i < n; i++) dst[i] = dst[i]! + F16_TABLE[src[i]!]!;
    return;
  }
  const bits = new Uint32Array(1);
  const val = new Float32Array(bits.buffer);
  for (let i = 0; i < n; i++) {
    bits[0] = src[i]! << 16;
    dst[i] = dst[i]! + val[0]!;
  }
}

/** dst = decode(payload) (the copy of the all-gather and broadcast). */
export function decodeCopy(dst: Float32Array, payload: Uint8Array, wire: Wire): void {
  const n = dst.length;
  if (wire === 'fp32') {
    new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength).set(payload);
    return;
  }
  const p = aligned(payload, 2);
  const src = new Uint16Array(p.buffer, p.byteOffset, n);
  if (wire === 'fp16') {
    for (let i = 0; i < n; i++) dst[i] = F16_TABLE[src[i]!]!;
    return;
  }
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = src[i]! << 16;
}
