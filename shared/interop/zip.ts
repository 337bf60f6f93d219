import { promises as fsp } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { UserError } from '../util/errors.js';

/**
 * Reading entries of a zip archive (PKWARE APPNOTE: end of central directory, its zip64 form,
 * central directory headers, local headers) with stored or deflated entries, which is all that
 * PyTorch's checkpoint writer produces. Only the directory is kept in memory; an entry's bytes
 * are read when asked for, and a stored entry can be read in part.
 */
export interface ZipEntry {
  readonly name: string;
  /** 0 stored, 8 deflated. */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  /** Offset of the local header. */
  readonly headerOffset: number;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
const U32 = 0xffffffff;

export class ZipReader {
  private readonly dataStart = new Map<string, number>();

  private constructor(
    readonly path: string,
    private readonly fh: fsp.FileHandle,
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  /** Opens `file`; null when it does not end in a zip directory (so the caller can name the format it expected). */
  static async open(file: string): Promise<ZipReader | null> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (e) {
      throw new UserError(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      const entries = await readDirectory(file, fh);
      if (!entries) {
        await fh.close();
        return null;
      }
      return new ZipReader(file, fh, entries);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** `length` bytes of entry `name` from byte `start` of its uncompressed contents (the whole entry by default). */
  async read(name: string, start = 0, length?: number): Promise<Buffer> {
    const e = this.entries.get(name);
    if (!e) throw new UserError(`${this.path}: the archive has no entry '${name}'`);
    const len = length ?? e.size - start;
    if (start < 0 || len < 0 || start + len > e.size)
      throw new UserError(`${this.path}: entry '${name}' has ${e.size} bytes, asked for [${start}, ${start + len})`);
    const at = await this.entryData(e);
    if (e.method === 0) return this.readAt(at + start, len, name);
    if (e.method !== 8)
      throw new UserError(`${this.path}: entry '${name}' uses zip compression method ${e.method}; only stored and deflated are read`);
    let whole: Buffer;
    try {
      whole = inflateRawSync(await this.readAt(at, e.compressedSize, name));
    } catch (err) {
      throw new UserError(`${this.path}: entry '${name}' does not inflate (${(err as Error).message}); the file is damaged`);
    }
    if (whole.length !== e.size)
      throw new UserError(`${this.path}: entry '${name}' inflates to ${whole.length} bytes, its header says ${e.size}`);
    return whole.subarray(start, start + len);
  }

  private async entryData(e: ZipEntry): Promise<number> {
    const known = this.dataStart.get(e.name);
    if (known !== undefined) return known;
    const h = await this.readAt(e.headerOffset, 30, e.name);
    if (h.readUInt32LE(0) !== LOCAL)
      throw new UserError(`${this.path}: entry '${e.name}' has no local header at ${e.headerOffset}; the file is damaged`);
    const at = e.headerOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
    this.dataStart.set(e.name, at);
    return at;
  }

  private async readAt(pos: number, length: number, what: string): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await this.fh.read(buf, got, length - got, pos + got);
      if (bytesRead === 0) throw new UserError(`${this.path}: truncated while reading '${what}' (${length} bytes at ${pos})`);
      got += bytesRead;
    }
    return buf;
  }
}

async function readDirectory(file: string, fh: fsp.FileHandle): Promise<Map<string, ZipEntry> | null> {
  const size = (await fh.stat()).size;
  const tailLen = Math.min(size, 22 + 0xffff);
  const tail = Buffer.alloc(tailLen);
  await fh.read(tail, 0, tailLen, size - tailLen);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--)
    if (tail.readUInt32LE(i) === EOCD) {
      eocd = i;
      break;
    }
  if (eocd < 0) return null;
  const bad = (why: string) => new UserError(`${file}: not a valid zip archive: ${why}`);
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  if (count === 0xffff || cdSize === U32 || cdOffset === U32) {
    const loc = eocd - 20;
    if (loc < 0 || tail.readUInt32LE(loc) !== ZIP64_LOCATOR) throw bad('zip64 sizes without a zip64 locator');
    const z = Buffer.alloc(56);
    await fh.read(z, 0, 56, Number(tail.readBigUInt64LE(loc + 8)));
    if (z.readUInt32LE(0) !== ZIP64_EOCD) throw bad('the zip64 end record is missing');
    count = Number(z.readBigUInt64LE(32));
    cdSize = Number(z.readBigUInt64LE(40));
    cdOffset = Number(z.readBigUInt64LE(48));
  }
  if (cdOffset + cdSize > size) throw bad(`the central directory [${cdOffset}, ${cdOffset + cdSize}) lies past the end (${size} bytes)`);
  const cd = Buffer.alloc(cdSize);
  await fh.read(cd, 0, cdSize, cdOffset);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let k = 0; k < count; k++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL) throw bad(`central directory entry ${k} is damaged`);
    const method = cd.readUInt16LE(p + 10);
    let compressedSize = cd.readUInt32LE(p + 20);
    let usize = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let headerOffset = cd.readUInt32LE(p + 42);
    const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
    // zip64: the extra field (id 1) holds, in order, whichever of the three values overflowed.
    for (let x = p + 46 + nameLen; x + 4 <= p + 46 + nameLen + extraLen; ) {
      const id = cd.readUInt16LE(x);
      const len = cd.readUInt16LE(x + 2);
      if (id === 1) {
        let q = x + 4;
        const next = () => {
          const v = Number(cd.readBigUInt64LE(q));
          q += 8;
          return v;
        };
        if (usize === U32) usize = next();
        if (compressedSize === U32) compressedSize = next();
        if (headerOffset === U32) headerOffset = next();
      }
      x += 4 + len;
    }
    entries.set(name, { name, method, compressedSize, size: usize, headerOffset });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}
