import { promises as fsp, type Stats } from 'node:fs';
import {
  SECTION_NAMES,
  SHARD_END_MAGIC,
  SHARD_HEADER_BYTES,
  blockTable,
  crc32,
  decodeHeader,
  shardDigest,
  sectionOffsets,
  shardFileBytes,
  trailerOffset,
  type SectionName,
  type ShardHeader,
} from './format.js';

/** Bytes read per call when streaming a section: whole blocks, bounded scratch memory. */
const READ_CHUNK = 8 << 20;

/**
 * An open shard file whose header, size and block table have been checked. Reads verify the
 * crc32 of every block they touch; nothing unverified reaches the caller. Errors are plain Errors
 * naming the file (the loader turns them into CheckpointCorruptError).
 */
export class ShardReader {
  private constructor(
    readonly path: string,
    readonly header: ShardHeader,
    private readonly fh: fsp.FileHandle,
    private readonly crcs: Uint32Array,
    readonly bytes: number,
    /** shardDigest of this file, as the manifest should record it. */
    readonly digest: string,
  ) {}

  static async open(file: string): Promise<ShardReader> {
    const fh = await fsp.open(file, 'r');
    try {
      const st: Stats = await fh.stat();
      const head = Buffer.alloc(SHARD_HEADER_BYTES);
      const { bytesRead } = await fh.read(head, 0, SHARD_HEADER_BYTES, 0);
      const h = decodeHeader(head.subarray(0, bytesRead), file);
      const want = shardFileBytes(h);
      if (st.size !== want)
        throw new Error(`${file}: ${st.size < want ? 'truncated' : 'has trailing bytes'}: ${st.size} bytes, its header says ${want}`);
      const { total } = blockTable(h);
      const tb = Buffer.alloc(total * 4 + 12);
      await fh.read(tb, 0, tb.length, trailerOffset(h));
      if (tb.toString('latin1', total * 4 + 4) !== SHARD_END_MAGIC) throw new Error(`${file}: bad end marker (file damaged)`);
      if (tb.readUInt32LE(total * 4) !== crc32(tb.subarray(0, total * 4))) throw new Error(`${file}: block checksum table damaged`);
      const crcs = new Uint32Array(total);
      for (let i = 0; i < total; i++) crcs[i] = tb.readUInt32LE(i * 4);
      return new ShardReader(file, h, fh, crcs, st.size, shardDigest(head, tb));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /**
   * Copy bytes [from, to) of a section into `dest`, reading and verifying only the blocks that
   * cover them.
   */
  async readBytes(section: SectionName, from: number, to: number, dest: Uint8Array): Promise<void> {
    const s = SECTION_NAMES.indexOf(section);
    const len = this.header.sectionBytes[s]!;
    if (from < 0 || to > len || from > to) throw new Error(`${this.path}: read [${from}, ${to}) outside ${section} (${len} bytes)`);
    if (dest.byteLength !== to - from) throw new Error('ShardReader.readBytes: destination has the wrong size');
    if (from === to) return;
    const B = this.header.blockBytes;
    const base = sectionOffsets(this.header)[s]!;
    const firstBlock = blockTable(this.header).first[s]!;
    const perRead = Math.max(1, Math.floor(READ_CHUNK / B));
    const chunks: { blk: number; a: number; b: number; direct: boolean }[] = [];
    for (let blk = Math.floor(from / B); blk * B < to; blk += perRead) {
      const a = blk * B;
      const b = Math.min(len, (blk + perRead) * B, Math.ceil(to / B) * B);
      // Whole blocks inside the request are read straight into the destination and verified
      // there; only the partial blocks at the ends go through a scratch buffer.
      chunks.push({ blk, a, b, direct: a >= from && b <= to });
    }
    const scratchBytes = Math.max(0, ...chunks.filter((c) => !c.direct).map((c) => c.b - c.a));
    const scratch = [0, 1].map(() => (scratchBytes ? Buffer.allocUnsafe(scratchBytes) : null));
    const load = async (i: number): Promise<Uint8Array> => {
      const { a, b, direct } = chunks[i]!;
      const buf = direct ? dest.subarray(a - from, b - from) : scratch[i % 2]!.subarray(0, b - a);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await this.fh.read(buf, got, buf.length - got, base + a + got);
        if (bytesRead === 0) throw new Error(`${this.path}: unexpected end of file in ${section}`);
        got += bytesRead;
      }
      return buf;
    };
    // One read ahead: the next chunk comes off the disk (libuv thread pool) while this one is checksummed.
    let next: Promise<Uint8Array> | null = load(0);
    for (let i = 0; i < chunks.length; i++) {
      const buf: Uint8Array = await next!;
      next = i + 1 < chunks.length ? load(i + 1) : null;
      // A failure below must not leave the read-ahead's rejection unobserved.
      next?.catch(() => {});
      const { blk, a, b, direct } = chunks[i]!;
      for (let k = 0; k * B < buf.length; k++) {
        const block = buf.subarray(k * B, Math.min(buf.length, (k + 1) * B));
        if (crc32(block) !== this.crcs[firstBlock + blk + k]) {
          await next?.catch(() => {});
          throw new Error(`${this.path}: checksum mismatch in ${section} block ${blk + k} (bytes ${a + k * B}..): the shard is corrupt`);
        }
      }
      if (!direct) {
        const lo = Math.max(a, from);
        const hi = Math.min(b, to);
        dest.set(buf.subarray(lo - a, hi - a), lo - from);
      }
    }
  }

  /**
   * Elements [start, end) of the flat vector (absolute indices inside this shard's range). `first`:
   * the index of the section's first element where it is not the range's (packed moments).
   */
  async readFloats(
    section: 'params' | 'm' | 'v',
    start: number,
    end: number,
    dest: Float32Array,
    first = this.header.start,
  ): Promise<void> {
    const last = first + this.header.sectionBytes[SECTION_NAMES.indexOf(section)]! / 4;
    if (start < first || end > last)
      throw new Error(`${this.path}: elements [${start}, ${end}) outside its ${section} [${first}, ${last})`);
    await this.readBytes(section, (start - first) * 4, (end - first) * 4, new Uint8Array(dest.buffer, dest.byteOffset, dest.byteLength));
  }

  async readExtra(): Promise<Uint8Array> {
    const out = new Uint8Array(this.header.sectionBytes[3]);
    await this.readBytes('extra', 0, out.byteLength, out);
    return out;
  }

  /** Every block of every section against its crc32 (one pass over the data). */
  async verifyBlocks(): Promise<void> {
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    for (const s of SECTION_NAMES) {
      const len = this.header.sectionBytes[SECTION_NAMES.indexOf(s)]!;
      for (let off = 0; off < len; off += READ_CHUNK) {
        const n = Math.min(READ_CHUNK, len - off);
        await this.readBytes(s, off, off + n, buf.subarray(0, n));
      }
    }
  }
}
