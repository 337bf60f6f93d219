import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { writeAtomically } from '../util/fs-atomic.js';
import { diskFull } from '../util/errors.js';
import {
  DEFAULT_BLOCK_BYTES,
  SHARD_END_MAGIC,
  SHARD_VERSION,
  PACKED_SHARD_VERSION,
  crc32,
  encodeHeader,
  shardDigest,
  shardFileBytes,
  shardFileName,
  type ShardHeader,
} from './format.js';

/** One rank's part of a checkpoint, as the worker hands it to the writer. */
export interface ShardData {
  readonly rank: number;
  readonly world: number;
  readonly step: number;
  readonly layoutHash: string;
  /** Element range [start, end) of the flat vector (`shardRange(total, world, rank)`). */
  readonly start: number;
  readonly end: number;
  /** This rank's slices: params[start, end), m and v of its ZeRO-1 shard (end - start long unless `packed`). */
  readonly params: Float32Array;
  readonly m: Float32Array;
  readonly v: Float32Array;
  /**
   * m and v are the rank's range of the packed trainable vector (--freeze; shared/trainable.ts),
   * of any length: written as format version 2. The commit checks their length.
   */
  readonly packed?: boolean;
  /** Opaque per-rank state (e.g. a worker's RNG), stored and checksummed as bytes. */
  readonly extra?: Uint8Array;
  readonly blockBytes?: number;
}

/** What a rank reports to the coordinator after its shard is durable. */
export interface ShardWritten {
  readonly file: string;
  readonly path: string;
  readonly rank: number;
  readonly world: number;
  readonly step: number;
  readonly start: number;
  readonly end: number;
  readonly bytes: number;
  /** sha256 of the header and block-checksum table (format.ts shardDigest). */
  readonly digest: string;
  /** Wall time of the write in the background (not the training stall). */
  readonly seconds: number;
}

/** Bytes per write call: several blocks, so checksumming one chunk overlaps the write of the previous. */
const WRITE_CHUNK = 8 << 20;

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Write one shard durably: temp name in the step directory, streamed with checksums, fsync,
 * rename, fsync of the directory. Runs in whatever thread calls it (the CheckpointWriter runs it
 * in a worker thread so the training thread only pays for the copy-out).
 */
export async function writeShard(stepDir: string, d: ShardData): Promise<ShardWritten> {
  const t0 = performance.now();
  const n = d.end - d.start;
  const k = d.packed ? d.m.length : n;
  if (!(n >= 0) || d.params.length !== n || d.m.length !== k || d.v.length !== k)
    throw new Error(
      `writeShard rank ${d.rank}: range [${d.start}, ${d.end}) has ${n} elements but params/m/v have ` +
        `${d.params.length}/${d.m.length}/${d.v.length}`,
    );
  if (!Number.isInteger(d.rank) || d.rank < 0 || d.rank >= d.world) throw new Error(`writeShard: rank ${d.rank} outside world ${d.world}`);
  if (!Number.isSafeInteger(d.step) || d.step < 0) throw new Error(`writeShard: step must be a non-negative integer, got ${d.step}`);
  if (!/^[0-9a-f]{64}$/.test(d.layoutHash))
    throw new Error(`writeShard: layoutHash must be layoutHash(layout) (64 hex digits), got '${d.layoutHash}'`);
  const extra = d.extra ?? new Uint8Array(0);
  const blockBytes = d.blockBytes ?? DEFAULT_BLOCK_BYTES;
  const header: ShardHeader = {
    version: d.packed ? PACKED_SHARD_VERSION : SHARD_VERSION,
    rank: d.rank,
    world: d.world,
    start: d.start,
    end: d.end,
    step: d.step,
    layoutHash: d.layoutHash,
    blockBytes,
    sectionBytes: [n * 4, k * 4, k * 4, extra.byteLength],
  };
  const file = shardFileName(d.rank, d.world);
  const target = path.join(stepDir, file);
  const headerBytes = encodeHeader(header);
  const full = (e: unknown) =>
    diskFull(e, target, `the previous committed checkpoint in ${path.dirname(stepDir)} is intact: free space, then resume the run`);
  await fsp.mkdir(stepDir, { recursive: true }).catch((e: unknown) => {
    throw full(e);
  });
  const trailer = await writeAtomically(target, async (fh) => {
    let pos = 0;
    let inflight: Promise<void> | null = null;
    const writeAt = async (buf: Uint8Array, at: number) => {
      let done = 0;
      while (done < buf.byteLength) {
        const { bytesWritten } = await fh.write(buf, done, buf.byteLength - done, at + done);
        done += bytesWritten;
      }
    };
    // Checksum the next chunk while the previous one is being written: one write in flight.
    const emit = async (buf: Uint8Array) => {
      if (inflight) await inflight;
      inflight = writeAt(buf, pos);
      pos += buf.byteLength;
    };
    let trailer: Buffer;
    try {
      await emit(headerBytes);
      const crcs: number[] = [];
      for (const section of [bytesOf(d.params), bytesOf(d.m), bytesOf(d.v), extra]) {
        for (let off = 0; off < section.byteLength; off += WRITE_CHUNK) {
          const chunk = section.subarray(off, Math.min(section.byteLength, off + WRITE_CHUNK));
          for (let b = 0; b < chunk.byteLength; b += blockBytes)
            crcs.push(crc32(chunk.subarray(b, Math.min(chunk.byteLength, b + blockBytes))));
          await emit(chunk);
        }
      }
      trailer = Buffer.alloc(crcs.length * 4 + 12);
      crcs.forEach((c, i) => trailer.writeUInt32LE(c, i * 4));
      trailer.writeUInt32LE(crc32(trailer.subarray(0, crcs.length * 4)), crcs.length * 4);
      trailer.write(SHARD_END_MAGIC, crcs.length * 4 + 4, 'latin1');
      await emit(trailer);
      await inflight;
    } catch (e) {
      // The file handle closes after this: no write may still be running on it.
      await (inflight as Promise<void> | null)?.catch(() => {});
      throw e;
    }
    if (pos !== shardFileBytes(header)) throw new Error(`writeShard: wrote ${pos} bytes, format says ${shardFileBytes(header)}`);
    return trailer;
  }).catch((e: unknown) => {
    throw full(e);
  });
  return {
    file,
    path: target,
    rank: d.rank,
    world: d.world,
    step: d.step,
    start: d.start,
    end: d.end,
    bytes: shardFileBytes(header),
    digest: shardDigest(headerBytes, trailer),
    seconds: (performance.now() - t0) / 1000,
  };
}
