import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readSync, statSync, statfsSync, unlinkSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import type { ShmNative } from '../../../native/addon.js';

/**
 * The same-host data path: ranks on one host move tensor bytes through a file in shared memory
 * (tmpfs, normally /dev/shm) instead of through loopback TCP, the way NCCL's SHM transport does
 * within a node. Loopback TCP costs two kernel copies plus the TCP stack per byte and a hand-over
 * between libzmq's I/O thread and the caller; a tmpfs pwrite and pread are one plain memory copy
 * each (docs/performance.md, "Collectives").
 *
 * Every rank owns one segment: a header and `slots` slots of `slotBytes`. It writes what it sends
 * to its ring successor (rank + 1: the only peer a ring or chain sends bulk data to) into the next
 * slot and sends a small descriptor (slot counter, byte count) over its ZeroMQ socket; the
 * successor reads the slot and answers with a release (the count of slots it has consumed), which
 * lets the slot be written again. All ordering, generations, checks and timeouts stay with the
 * ZeroMQ messages; the segment only holds the bytes.
 *
 * Whether two ranks share a host is found out, not configured: the successor opens the path the
 * rank announced in its handshake and compares the random token in the header with the announced
 * one. Ranks in different pods or on different machines do not see each other's file (or see
 * another one), and those links stay on the socket.
 *
 * Segment header (64 bytes, little-endian): 'CXRSHM01', 16 random token bytes, u32 slots,
 * u32 slotBytes, zero padding.
 */

const MAGIC = Buffer.from('CXRSHM01', 'latin1');
const HEADER_BYTES = 64;
const TOKEN_BYTES = 16;
/**
 * Slots per segment: up to 8, enough to keep chunks in flight while the reader catches up, within
 * 16 MiB per rank so that four ranks fit a container's default 64 MiB /dev/shm.
 */
export function shmSlots(slotBytes: number): number {
  return Math.max(2, Math.min(8, Math.floor((16 << 20) / slotBytes)));
}
/** tmpfs, where pages are memory; other file systems would turn the data path into disk I/O. */
const TMPFS_MAGIC = 0x01021994;
export const DEFAULT_SHM_DIR = '/dev/shm';

/** What a rank tells its peers about its segment in the handshake. */
export interface ShmOffer {
  path: string;
  token: string;
  slots: number;
  slotBytes: number;
}

/** Descriptor of one slot's bytes, the payload of a shared-memory DATA message. */
export const DESCRIPTOR_BYTES = 12;

export function encodeDescriptor(counter: number, bytes: number): Buffer {
  const b = Buffer.alloc(DESCRIPTOR_BYTES);
  b.writeUIntLE(counter, 0, 6);
  b.writeUInt32LE(bytes, 8);
  return b;
}

export function decodeDescriptor(payload: Uint8Array): { counter: number; bytes: number } | null {
  if (payload.length !== DESCRIPTOR_BYTES) return null;
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (b.readUInt16LE(6) !== 0) return null;
  return { counter: b.readUIntLE(0, 6), bytes: b.readUInt32LE(8) };
}

export function encodeRelease(consumed: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUIntLE(consumed, 0, 6);
  return b;
}

export function decodeRelease(payload: Uint8Array): number | null {
  if (payload.length !== 8) return null;
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  return b.readUInt16LE(6) === 0 ? b.readUIntLE(0, 6) : null;
}

/** Why the shared-memory directory cannot be used, or null when it can. */
export function shmDirProblem(dir: string): string | null {
  try {
    if (!statSync(dir).isDirectory()) return `${dir} is not a directory`;
    if (Number(statfsSync(dir).type) !== TMPFS_MAGIC) return `${dir} is not a tmpfs (memory) file system`;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? `${dir} does not exist` : `cannot use ${dir}: ${(e as Error).message}`;
  }
  return null;
}

/** This rank's segment, written by it and read by its ring successor. */
export class ShmSegment {
  private fd: number;
  private linked = true;
  /** The file mapped (with the native addon): a slot is written with a memory copy, not pwrite. */
  private mem: Uint8Array | null = null;
  /** Slots written so far, and slots the reader has released. */
  private written = 0;
  private released = 0;

  private constructor(
    readonly path: string,
    readonly token: string,
    readonly slots: number,
    readonly slotBytes: number,
    fd: number,
  ) {
    this.fd = fd;
  }

  /**
   * Creates the segment in `dir` and writes every page once, so that a full /dev/shm (a
   * container's 64 MiB default) shows up here as an error, not in the middle of a collective.
   * Throws with the reason when the directory cannot hold it. With `native`, the file is also
   * mapped, and slots are written through the mapping.
   */
  static create(dir: string, slots: number, slotBytes: number, native: ShmNative | null = null): ShmSegment {
    const f = createShmFile(dir, MAGIC, [slots, slotBytes], slots * slotBytes);
    const seg = new ShmSegment(f.file, f.token, slots, slotBytes, f.fd);
    if (native) seg.mem = mapFile(native, f.fd, HEADER_BYTES + slots * slotBytes);
    return seg;
  }

  offer(): ShmOffer {
    return { path: this.path, token: this.token, slots: this.slots, slotBytes: this.slotBytes };
  }

  /** Whether a slot is free to write (the reader has released all but `slots - 1` of the written ones). */
  canWrite(): boolean {
    return this.written - this.released < this.slots;
  }

  /** Copies `src` into the next slot and returns its counter (the descriptor's). */
  write(src: Uint8Array): number {
    if (!this.canWrite()) throw new Error('shared-memory segment: no free slot');
    if (src.byteLength > this.slotBytes)
      throw new RangeError(`shared-memory segment: ${src.byteLength} bytes do not fit a ${this.slotBytes}-byte slot`);
    const counter = this.written;
    const at = slotOffset(counter, this.slots, this.slotBytes);
    if (this.mem) this.mem.set(src, at);
    else writeAll(this.fd, src, at);
    this.written++;
    return counter;
  }

  /** Records the reader's release (a cumulative count); false when it cannot be right. */
  release(consumed: number): boolean {
    if (!Number.isSafeInteger(consumed) || consumed < this.released || consumed > this.written) return false;
    this.released = consumed;
    return true;
  }

  /** Removes the name; the reader's open descriptor keeps the pages until it closes. */
  unlink(): void {
    if (!this.linked) return;
    this.linked = false;
    unlinkQuietly(this.path);
  }

  close(): void {
    this.unlink();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    this.mem = null;
  }
}

/** The predecessor's segment, opened for reading. */
export class ShmPeer {
  /** The next slot counter this rank expects to read. */
  private next = 0;

  private constructor(
    private fd: number,
    readonly slots: number,
    readonly slotBytes: number,
    /** The file mapped (with the native addon): slots are read in place, not with pread. */
    private mem: Uint8Array | null,
  ) {}

  /**
   * Opens the segment an offer names; the reason it is not this host's (or not usable) otherwise.
   * With `native`, the file is also mapped.
   */
  static open(offer: unknown, native: ShmNative | null = null): ShmPeer | string {
    const o = offer as Partial<ShmOffer> | null;
    if (
      !o ||
      typeof o !== 'object' ||
      typeof o.path !== 'string' ||
      typeof o.token !== 'string' ||
      !Number.isInteger(o.slots) ||
      !Number.isInteger(o.slotBytes)
    )
      return 'malformed shared-memory offer';
    const open = (flags: 'r' | 'r+') =>
      openShmFile(o.path!, o.token!, flags, MAGIC, [o.slots!, o.slotBytes!], o.slots! * o.slotBytes!, 'segment');
    // The addon maps read-write, so a mapped reader opens the file read-write; where that is not
    // allowed it reads with pread.
    if (native) {
      const fd = open('r+');
      if (typeof fd === 'number')
        try {
          return new ShmPeer(fd, o.slots!, o.slotBytes!, mapFile(native, fd, HEADER_BYTES + o.slots! * o.slotBytes!));
        } catch {
          closeSync(fd);
        }
    }
    const fd = open('r');
    return typeof fd === 'string' ? fd : new ShmPeer(fd, o.slots!, o.slotBytes!, null);
  }

  /** The count of slots consumed, to send back as the release. */
  get consumed(): number {
    return this.next;
  }

  /** Why a descriptor cannot be the next one, or null when it can. */
  check(counter: number, bytes: number): string | null {
    if (counter !== this.next) return `shared-memory slot ${counter} arrived, expected ${this.next}`;
    if (bytes > this.slotBytes) return `shared-memory descriptor of ${bytes} bytes exceeds the ${this.slotBytes}-byte slot`;
    return null;
  }

  /** Copies bytes `from`..`from + dst.byteLength` of the next slot into `dst` (call `check` first). */
  read(dst: Uint8Array, from = 0): void {
    const at = slotOffset(this.next, this.slots, this.slotBytes) + from;
    if (this.mem) return dst.set(this.mem.subarray(at, at + dst.byteLength));
    let done = 0;
    while (done < dst.byteLength) {
      const n = readSync(this.fd, dst, done, dst.byteLength - done, at + done);
      if (n <= 0) throw new Error('shared-memory segment shrank under the reader');
      done += n;
    }
  }

  /**
   * The next slot's first `floats` values in place (call `check` first), for a reader that adds
   * them into its buffer without copying them out; null when the segment is not mapped.
   */
  floats(floats: number): Float32Array | null {
    const at = slotOffset(this.next, this.slots, this.slotBytes);
    if (!this.mem || at % 4 !== 0) return null;
    return new Float32Array(this.mem.buffer, this.mem.byteOffset + at, floats);
  }

  /** Moves on to the next slot; the caller releases it to the writer. */
  advance(): void {
    this.next++;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    this.mem = null;
  }
}

/** Byte offset in a segment's file of the slot that carries slot counter `counter`. */
function slotOffset(counter: number, slots: number, slotBytes: number): number {
  return HEADER_BYTES + (counter % slots) * slotBytes;
}

/** The whole file behind `fd` mapped shared; the mapping goes when the array is collected. */
function mapFile(native: ShmNative, fd: number, bytes: number): Uint8Array {
  return new Uint8Array(native.map(fd, bytes));
}

const SEGMENT_NAME = /^cxr-collectives-(\d+)-[0-9a-f]{8}$/;

/**
 * Removes segments whose creator is gone. A name only outlives its handshake when the process was
 * killed during it; nothing else would ever free those pages. (/dev/shm is sticky: another
 * user's files cannot be removed, and are left alone.)
 */
export function sweepStaleSegments(dir: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = SEGMENT_NAME.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    try {
      unlinkSync(path.join(dir, name));
      removed.push(name);
    } catch {
      // not ours to remove, or gone already
    }
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Creates a file for this rank in `dir` (a tmpfs; stale names swept first) with the 64-byte
 * header (magic, a random token, two u32 layout fields) and `dataBytes` after it, every page
 * written once so that a full /dev/shm (a container's 64 MiB default) is an error here, not in
 * the middle of a collective. Nothing is left behind when it throws.
 */
function createShmFile(
  dir: string,
  magic: Buffer,
  layout: [number, number],
  dataBytes: number,
): { file: string; token: string; fd: number } {
  const problem = shmDirProblem(dir);
  if (problem) throw new Error(problem);
  sweepStaleSegments(dir);
  const token = randomBytes(TOKEN_BYTES);
  const file = path.join(dir, `cxr-collectives-${process.pid}-${token.toString('hex', 0, 4)}`);
  const fd = openSync(file, 'wx+', 0o600);
  try {
    const header = Buffer.alloc(HEADER_BYTES);
    magic.copy(header, 0);
    token.copy(header, 8);
    header.writeUInt32LE(layout[0], 24);
    header.writeUInt32LE(layout[1], 28);
    writeAll(fd, header, 0);
    const zeros = Buffer.alloc(Math.min(Math.max(dataBytes, 1), 1 << 20));
    for (let at = 0; at < dataBytes; at += zeros.length)
      writeAll(fd, zeros.subarray(0, Math.min(zeros.length, dataBytes - at)), HEADER_BYTES + at);
    return { file, token: token.toString('hex'), fd };
  } catch (e) {
    closeSync(fd);
    unlinkQuietly(file);
    throw e;
  }
}

/** Opens a peer's file when it is the one its offer announced; the reason otherwise. */
function openShmFile(
  file: string,
  token: string,
  flags: 'r' | 'r+',
  magic: Buffer,
  layout: [number, number],
  dataBytes: number,
  what: string,
): number | string {
  if (!path.isAbsolute(file) || !existsSync(file)) return `${file} is not visible here (another host or container)`;
  let fd: number;
  try {
    fd = openSync(file, flags);
  } catch (e) {
    return `cannot open ${file}: ${(e as Error).message}`;
  }
  const header = Buffer.alloc(HEADER_BYTES);
  const ok =
    readSync(fd, header, 0, HEADER_BYTES, 0) === HEADER_BYTES &&
    header.subarray(0, 8).equals(magic) &&
    header.toString('hex', 8, 8 + TOKEN_BYTES) === token &&
    header.readUInt32LE(24) === layout[0] &&
    header.readUInt32LE(28) === layout[1] &&
    fstatSync(fd).size >= HEADER_BYTES + dataBytes;
  if (ok) return fd;
  closeSync(fd);
  return `${file} is not the announced ${what} (another host's file of the same name?)`;
}

function unlinkQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // already gone
  }
}

function writeAll(fd: number, src: Uint8Array, at: number): void {
  let done = 0;
  while (done < src.byteLength) done += writeSync(fd, src, done, src.byteLength - done, at + done);
}

/**
 * The shared-buffer all-reduce's memory (algorithms/shared-buffers.ts): a file every rank on
 * the host maps, holding two halves of `world` input blocks and one result block of `blockElems`
 * floats each. Rank k copies its sub-piece of every segment into its inputs, owner k folds block k
 * of every rank's inputs into its result, and every rank copies the results out: the ranks read
 * each other's memory in place, instead of copying through the kernel twice per byte moved.
 *
 * Header (64 bytes): 'CXRREG01', 16 token bytes, u32 world, u32 blockElems.
 */
const REGION_MAGIC = Buffer.from('CXRREG01', 'latin1');
/** /dev/shm per rank for the regions; a block is at most 4 MiB. */
const REGION_BUDGET_BYTES = 48 << 20;

export function regionBlockElems(world: number): number {
  const fit = Math.floor(REGION_BUDGET_BYTES / (2 * (world + 1)) / 4096) * 1024;
  return Math.max(1024, Math.min(1 << 20, fit));
}

export interface RegionOffer {
  path: string;
  token: string;
  world: number;
  blockElems: number;
}

export class ShmRegion {
  private constructor(
    readonly path: string,
    readonly token: string,
    readonly world: number,
    readonly blockElems: number,
    /** The data area, mapped. */
    readonly floats: Float32Array,
  ) {}

  private linked = true;

  static create(dir: string, world: number, native: ShmNative): ShmRegion {
    const blockElems = regionBlockElems(world);
    const dataBytes = 2 * (world + 1) * blockElems * 4;
    const f = createShmFile(dir, REGION_MAGIC, [world, blockElems], dataBytes);
    try {
      const floats = new Float32Array(native.map(f.fd, HEADER_BYTES + dataBytes), HEADER_BYTES, dataBytes / 4);
      return new ShmRegion(f.file, f.token, world, blockElems, floats);
    } catch (e) {
      unlinkQuietly(f.file);
      throw e;
    } finally {
      closeSync(f.fd);
    }
  }

  /** Maps a peer's region; the reason it cannot (another host, another layout) otherwise. */
  static open(offer: unknown, world: number, native: ShmNative): Float32Array | string {
    const o = offer as Partial<RegionOffer> | null;
    if (
      !o ||
      typeof o !== 'object' ||
      typeof o.path !== 'string' ||
      typeof o.token !== 'string' ||
      o.world !== world ||
      o.blockElems !== regionBlockElems(world)
    )
      return 'malformed or mismatched shared-buffer offer';
    const dataBytes = 2 * (world + 1) * o.blockElems * 4;
    const fd = openShmFile(o.path, o.token, 'r+', REGION_MAGIC, [world, o.blockElems], dataBytes, 'region');
    if (typeof fd === 'string') return fd;
    try {
      return new Float32Array(native.map(fd, HEADER_BYTES + dataBytes), HEADER_BYTES, dataBytes / 4);
    } catch (e) {
      return `cannot map ${o.path}: ${(e as Error).message}`;
    } finally {
      closeSync(fd);
    }
  }

  offer(): RegionOffer {
    return { path: this.path, token: this.token, world: this.world, blockElems: this.blockElems };
  }

  /** Removes the name; the mappings stay until they are collected. */
  unlink(): void {
    if (!this.linked) return;
    this.linked = false;
    unlinkQuietly(this.path);
  }
}
