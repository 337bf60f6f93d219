import { createHash } from 'node:crypto';
import * as zlib from 'node:zlib';
import type { ParamLayout } from '../params.js';

/**
 * The shard file format (little-endian throughout; see docs/checkpoints.md):
 *
 *   [0, 128)          fixed header: magic, version, rank, world, range, step, layout hash,
 *                     block size, section byte lengths, crc32 of the header itself
 *   sections          params slice, AdamW m slice, AdamW v slice (float32), extra state (bytes)
 *                     (version 2: m and v are the rank's range of the packed trainable vector,
 *                     shared/trainable.ts, whose length the header gives; the manifest says which
 *                     entries it leaves out)
 *   trailer           crc32 of every block of every section (blocks of `blockBytes`, counted
 *                     from each section's start), crc32 of that table, end magic
 *
 * The trailer follows the data so a writer can checksum while it streams (one pass, no seek
 * back); per-block checksums let a resharding loader verify exactly the byte ranges it reads.
 * The file's size is a function of the header, so truncation is caught before any data is read.
 */
export const SHARD_MAGIC = 'CXRSHRD\0';
export const SHARD_END_MAGIC = 'CXRSHEND';
/** The version of a shard whose moments cover its parameter range. */
export const SHARD_VERSION = 1;
/** The version of a shard whose moments cover a range of the packed trainable vector (--freeze). */
export const PACKED_SHARD_VERSION = 2;
export const SHARD_HEADER_BYTES = 128;
export const DEFAULT_BLOCK_BYTES = 1 << 20;
export const SECTION_NAMES = ['params', 'm', 'v', 'extra'] as const;
export type SectionName = (typeof SECTION_NAMES)[number];

if (typeof (zlib as { crc32?: unknown }).crc32 !== 'function') {
  throw new Error('cxr-align checkpoints need zlib.crc32 (Node >= 20.15); this is Node ' + process.version);
}
/** CRC-32 (zlib's, hardware-assisted where available): about 2 GB/s here, twice sha256. */
export function crc32(bytes: Uint8Array, prev = 0): number {
  return zlib.crc32(bytes, prev) >>> 0;
}

export interface ShardHeader {
  readonly version: number;
  readonly rank: number;
  readonly world: number;
  /** Element range [start, end) of the flat parameter vector this shard holds. */
  readonly start: number;
  readonly end: number;
  readonly step: number;
  /** sha256 (hex) of the layout's names and shapes: a shard is refused by a model of another shape. */
  readonly layoutHash: string;
  readonly blockBytes: number;
  /** Byte lengths of params, m, v, extra (version 2: m and v need not be as long as params). */
  readonly sectionBytes: readonly [number, number, number, number];
}

/** Names and shapes, in order: what must agree for flat vectors to mean the same thing. */
export function layoutHash(layout: ParamLayout): string {
  const canon = JSON.stringify(layout.entries.map((e) => [e.name, e.shape]));
  return createHash('sha256').update(canon).digest('hex');
}

export function stepDirName(step: number): string {
  return `step-${String(step).padStart(7, '0')}`;
}
export const STEP_DIR_RE = /^step-(\d{7,})$/;

export function shardFileName(rank: number, world: number): string {
  return `shard-${String(rank).padStart(5, '0')}-of-${String(world).padStart(5, '0')}.bin`;
}

export function blockCount(bytes: number, blockBytes: number): number {
  return Math.ceil(bytes / blockBytes);
}

/** Byte offset of each section's first byte in the file. */
export function sectionOffsets(h: ShardHeader): [number, number, number, number] {
  const out: [number, number, number, number] = [0, 0, 0, 0];
  let at = SHARD_HEADER_BYTES;
  for (let i = 0; i < 4; i++) {
    out[i] = at;
    at += h.sectionBytes[i]!;
  }
  return out;
}

/** Index of each section's first block in the trailer's crc table, and the table's length. */
export function blockTable(h: ShardHeader): { first: [number, number, number, number]; total: number } {
  const first: [number, number, number, number] = [0, 0, 0, 0];
  let n = 0;
  for (let i = 0; i < 4; i++) {
    first[i] = n;
    n += blockCount(h.sectionBytes[i]!, h.blockBytes);
  }
  return { first, total: n };
}

export function trailerOffset(h: ShardHeader): number {
  return SHARD_HEADER_BYTES + h.sectionBytes.reduce((a, b) => a + b, 0);
}

export function trailerBytes(h: ShardHeader): number {
  return blockTable(h).total * 4 + 4 + 8;
}

export function shardFileBytes(h: ShardHeader): number {
  return trailerOffset(h) + trailerBytes(h);
}

/**
 * A shard's fingerprint, recorded in the manifest: sha256 of its header and its trailer (the crc32
 * of every block). It binds the manifest to every byte of the shard through the block checksums,
 * costs no second pass over the data, and is checked whenever a shard is opened.
 */
export function shardDigest(header: Uint8Array, trailer: Uint8Array): string {
  return createHash('sha256').update(header).update(trailer).digest('hex');
}

export function encodeHeader(h: ShardHeader): Buffer {
  const b = Buffer.alloc(SHARD_HEADER_BYTES);
  b.write(SHARD_MAGIC, 0, 'latin1');
  b.writeUInt32LE(h.version, 8);
  b.writeUInt32LE(SHARD_HEADER_BYTES, 12);
  b.writeUInt32LE(h.rank, 16);
  b.writeUInt32LE(h.world, 20);
  b.writeBigUInt64LE(BigInt(h.start), 24);
  b.writeBigUInt64LE(BigInt(h.end), 32);
  b.writeBigUInt64LE(BigInt(h.step), 40);
  Buffer.from(h.layoutHash, 'hex').copy(b, 48);
  b.writeUInt32LE(h.blockBytes, 80);
  for (let i = 0; i < 4; i++) b.writeBigUInt64LE(BigInt(h.sectionBytes[i]!), 88 + 8 * i);
  b.writeUInt32LE(crc32(b.subarray(0, 120)), 120);
  return b;
}

/** Parse and check a header; `where` names the file in errors. Throws a plain Error with the reason. */
export function decodeHeader(b: Uint8Array, where: string): ShardHeader {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < SHARD_HEADER_BYTES) throw new Error(`${where}: file shorter than the ${SHARD_HEADER_BYTES}-byte shard header`);
  if (buf.toString('latin1', 0, 8) !== SHARD_MAGIC) throw new Error(`${where}: not a cxr-align checkpoint shard (bad magic)`);
  if (buf.readUInt32LE(120) !== crc32(buf.subarray(0, 120))) throw new Error(`${where}: shard header checksum mismatch`);
  const version = buf.readUInt32LE(8);
  if (version !== SHARD_VERSION && version !== PACKED_SHARD_VERSION)
    throw new Error(`${where}: shard format version ${version}, this build reads ${SHARD_VERSION} and ${PACKED_SHARD_VERSION}`);
  const num = (off: number) => Number(buf.readBigUInt64LE(off));
  const h: ShardHeader = {
    version,
    rank: buf.readUInt32LE(16),
    world: buf.readUInt32LE(20),
    start: num(24),
    end: num(32),
    step: num(40),
    layoutHash: buf.toString('hex', 48, 80),
    blockBytes: buf.readUInt32LE(80),
    sectionBytes: [num(88), num(96), num(104), num(112)],
  };
  const floats = (h.end - h.start) * 4;
  const moments = version === SHARD_VERSION ? floats : h.sectionBytes[1];
  if (
    h.end < h.start ||
    h.sectionBytes[0] !== floats ||
    h.sectionBytes[1] !== moments ||
    h.sectionBytes[2] !== moments ||
    moments % 4 !== 0
  )
    throw new Error(`${where}: shard header sections do not match its range [${h.start}, ${h.end})`);
  if (h.blockBytes < 4 || h.blockBytes % 4 !== 0) throw new Error(`${where}: bad block size ${h.blockBytes}`);
  return h;
}
