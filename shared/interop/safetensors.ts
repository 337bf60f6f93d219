import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { writeAtomically } from '../util/fs-atomic.js';

/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N
 * bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`,
 * then the tensor bytes, little-endian, row-major, offsets relative to the end of the header.
 * Reading keeps only the header in memory and reads one tensor at a time at its offset; writing
 * streams tensor by tensor to a temp file, fsync, rename.
 */
/** Bytes per element of each safetensors dtype (also the element sizes of PyTorch storages). */
export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;
export type Dtype = keyof typeof DTYPE_BYTES;

/** Same ceiling as the reference implementation: a larger header is a damaged or hostile file. */
const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** Absolute byte range in the file. */
  readonly begin: number;
  readonly end: number;
}

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly fh: fsp.FileHandle,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    readonly metadata: Readonly<Record<string, string>>,
  ) {}

  static async open(file: string): Promise<SafetensorsFile> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (e) {
      throw new UserError(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      const size = (await fh.stat()).size;
      const bad = (why: string) => new UserError(`${file}: not a valid safetensors file: ${why}`);
      if (size < 8) throw bad(`${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      await fh.read(lenBuf, 0, 8, 0);
      const n = lenBuf.readBigUInt64LE(0);
      if (n > BigInt(MAX_HEADER_BYTES)) throw bad(`header length ${n} is over ${MAX_HEADER_BYTES} bytes`);
      const hlen = Number(n);
      if (8 + hlen > size) throw bad(`truncated: header says ${hlen} bytes of JSON but the file has ${size - 8} after the length`);
      const hbuf = Buffer.alloc(hlen);
      await fh.read(hbuf, 0, hlen, 8);
      let doc: unknown;
      try {
        doc = JSON.parse(hbuf.toString('utf8'));
      } catch (e) {
        throw bad(`header is not valid JSON (${(e as Error).message})`);
      }
      if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw bad('header is not a JSON object');
      const dataStart = 8 + hlen;
      const dataBytes = size - dataStart;
      let metadata: Record<string, string> = {};
      const infos: TensorInfo[] = [];
      for (const [name, raw] of Object.entries(doc as Record<string, unknown>)) {
        if (name === '__metadata__') {
          if (raw === null || typeof raw !== 'object' || Object.values(raw).some((v) => typeof v !== 'string'))
            throw bad(`'__metadata__' must map strings to strings`);
          metadata = raw as Record<string, string>;
          continue;
        }
        const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        if (t === null || typeof t !== 'object') throw bad(`tensor '${name}' is not an object`);
        if (typeof t.dtype !== 'string' || !(t.dtype in DTYPE_BYTES))
          throw bad(`tensor '${name}' has unknown dtype ${JSON.stringify(t.dtype)}`);
        if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
          throw bad(`tensor '${name}' has a bad shape ${JSON.stringify(t.shape)}`);
        const off = t.data_offsets;
        if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1])
          throw bad(`tensor '${name}' has bad data_offsets ${JSON.stringify(off)}`);
        const dtype = t.dtype as Dtype;
        const count = (t.shape as number[]).reduce((a, b) => a * b, 1);
        if (off[1] - off[0] !== count * DTYPE_BYTES[dtype])
          throw bad(
            `tensor '${name}' ${dtype}${JSON.stringify(t.shape)} needs ${count * DTYPE_BYTES[dtype]} bytes but data_offsets span ${off[1] - off[0]}`,
          );
        infos.push({ name, dtype, shape: t.shape as number[], begin: dataStart + off[0], end: dataStart + off[1] });
      }
      // Like the reference: tensors tile the data buffer exactly, no overlap and no hole.
      const sorted = [...infos].sort((a, b) => a.begin - b.begin || a.end - b.end);
      let at = dataStart;
      for (const t of sorted) {
        if (t.begin < at)
          throw bad(`tensor '${t.name}' overlaps the tensor before it (data_offsets start ${t.begin - dataStart} < ${at - dataStart})`);
        if (t.begin > at)
          throw bad(
            `unused bytes before tensor '${t.name}' (data_offsets start ${t.begin - dataStart}, previous tensor ends at ${at - dataStart})`,
          );
        at = t.end;
      }
      if (at - dataStart > dataBytes) throw bad(`truncated: tensors need ${at - dataStart} data bytes, the file has ${dataBytes}`);
      if (at - dataStart < dataBytes) throw bad(`${dataBytes - (at - dataStart)} bytes after the last tensor`);
      return new SafetensorsFile(file, fh, new Map(infos.map((i) => [i.name, i])), metadata);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new UserError(`${this.path}: no tensor named '${name}'`);
    return t;
  }

  async readBytes(name: string): Promise<Buffer> {
    const t = this.info(name);
    const buf = Buffer.allocUnsafe(t.end - t.begin);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await this.fh.read(buf, got, buf.length - got, t.begin + got);
      if (bytesRead === 0) throw new UserError(`${this.path}: file shrank while reading '${name}'`);
      got += bytesRead;
    }
    return buf;
  }

  /** A floating-point tensor as float32 (F16, BF16 and F64 are converted). */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    const b = await this.readBytes(name);
    const n = b.length / DTYPE_BYTES[t.dtype];
    switch (t.dtype) {
      case 'F32': {
        const out = new Float32Array(n);
        new Uint8Array(out.buffer).set(b);
        return out;
      }
      case 'F16': {
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = f16ToF32(b.readUInt16LE(2 * i));
        return out;
      }
      case 'BF16': {
        const u = new Uint32Array(n);
        for (let i = 0; i < n; i++) u[i] = b.readUInt16LE(2 * i) << 16;
        return new Float32Array(u.buffer);
      }
      case 'F64': {
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = b.readDoubleLE(8 * i);
        return out;
      }
      default:
        throw new UserError(`${this.path}: tensor '${name}' is ${t.dtype}, expected a floating-point tensor (F32, F16, BF16, F64)`);
    }
  }
}

const f16Scratch = new DataView(new ArrayBuffer(4));
/** IEEE binary16 -> number, exact (subnormals, infinities and NaN payload bits kept). */
export function f16ToF32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  let mant = h & 0x3ff;
  let bits: number;
  if (exp === 0) {
    if (mant === 0) bits = sign;
    else {
      let e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400) === 0);
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp === 0x1f) bits = sign | 0x7f800000 | (mant << 13);
  else bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  f16Scratch.setUint32(0, bits >>> 0);
  return f16Scratch.getFloat32(0);
}

export interface TensorOut {
  readonly name: string;
  readonly shape: readonly number[];
  /** The values, or a function producing them, called once when the tensor is written (keeps one in memory). */
  readonly data: Float32Array | (() => Float32Array);
}

/** Write float32 tensors in the given order; temp name, fsync, rename. Returns the file size. */
export async function writeSafetensors(
  file: string,
  tensors: readonly TensorOut[],
  metadata: Record<string, string> = {},
): Promise<number> {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let at = 0;
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name in header) throw new Error(`writeSafetensors: duplicate or reserved tensor name '${t.name}'`);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * 4;
    header[t.name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [at, at + bytes] };
    at += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  // Pad with spaces so tensor data starts 8-byte aligned (what the reference writer does).
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await fsp.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  return writeAtomically(path.resolve(file), async (fh) => {
    let pos = 0;
    const write = async (b: Uint8Array) => {
      for (let done = 0; done < b.byteLength; ) {
        const { bytesWritten } = await fh.write(b, done, b.byteLength - done, pos + done);
        done += bytesWritten;
      }
      pos += b.byteLength;
    };
    await write(len);
    await write(json);
    for (const t of tensors) {
      const data = typeof t.data === 'function' ? t.data() : t.data;
      const want = t.shape.reduce((a, b) => a * b, 1);
      if (data.length !== want)
        throw new Error(`writeSafetensors: '${t.name}' has ${data.length} values for shape ${JSON.stringify(t.shape)}`);
      await write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    return pos;
  });
}
