import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Message, RecordBatchReader, Utf8, makeData, makeVector, type AsyncRecordBatchFileReader } from 'apache-arrow';
import { UserError } from '../util/errors.js';
import { REQUIRED_COLUMNS, imageSizeOf, invalidLabel, recordBatchColumns, type RecordBatchColumns, type SampleBatch } from './columns.js';
import { readManifest, SPLITS, type Manifest, type ShardInfo, type SplitName } from './manifest.js';

export type { SampleBatch } from './columns.js';
export type { Manifest, SplitName } from './manifest.js';

/**
 * Random access to one split by index, through the record-batch index in each Arrow file's
 * footer. A record batch as ShardWriter writes it (no compression, no nulls) is read in two
 * parts: its small columns (labels, ids, paths, reports: everything after the pixels, a few
 * percent of the batch) once, into the cache, and the pixels of each requested row straight from
 * the file. So a random read of n rows costs n pixel reads plus the small columns of the batches
 * it touches, not a whole record batch (about 2 MiB) per row: with the split larger than the
 * cache, the coordinator used to spend ~20 ms of CPU per 16-row slice reading and collecting
 * record batches. Record batches written otherwise (compressed, with nulls) are decoded whole.
 *
 * Peak memory of a reader: the open footers (a few hundred bytes per record batch), the cache
 * (`cacheBytes`, default 32 MiB: small columns, or whole batches where those are decoded), plus
 * the returned SampleBatch. Never the split, never a whole shard.
 */
export interface SplitReader {
  readonly name: SplitName;
  readonly length: number;
  /** Samples at `indices` (any order, repeats allowed), in that order, copied into fresh arrays. */
  read(indices: ArrayLike<number>): Promise<SampleBatch>;
  /** Record batches loaded so far, and how many of them had to be decoded whole (see above). */
  readonly stats: { batches: number; wholeBatches: number };
}

export interface Dataset {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly labelNames: readonly string[];
  split(name: SplitName): SplitReader;
  /** Close every open shard file. */
  close(): Promise<void>;
}

export interface OpenOptions {
  /** Bytes of record-batch columns cached per split (default 32 MiB). */
  cacheBytes?: number;
}

/** Open a dataset directory: validates manifest.json; shard files open on first use. */
export async function openDataset(dir: string, opts: OpenOptions = {}): Promise<Dataset> {
  const manifest = await readManifest(dir);
  const readers = new Map<SplitName, SplitReaderImpl>();
  for (const s of SPLITS) readers.set(s, new SplitReaderImpl(dir, manifest, s, opts.cacheBytes ?? 32 << 20));
  return {
    dir,
    manifest,
    labelNames: manifest.labels,
    split(name: SplitName): SplitReader {
      const r = readers.get(name);
      if (!r) throw new UserError(`no split '${name}': a dataset has ${SPLITS.join(', ')}`);
      return r;
    },
    async close() {
      for (const r of readers.values()) await r.close();
    },
  };
}

/**
 * One record batch as the cache holds it: every column but the pixels, which stay in the file at
 * `pixelsAt` (row r's at pixelsAt + r*H*W), or, for a batch decoded whole, every column
 * (`pixelsAt` null).
 */
interface CachedBatch {
  cols: RecordBatchColumns;
  pixelsAt: number | null;
  bytes: number;
}

/** One shard file: its Arrow reader, opened lazily, with batch reads serialised (the reader seeks). */
class ShardHandle {
  private reader: Promise<AsyncRecordBatchFileReader> | null = null;
  private fh: fsp.FileHandle | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly file: string,
    readonly info: ShardInfo,
  ) {}

  private open(): Promise<AsyncRecordBatchFileReader> {
    this.reader ??= (async () => {
      try {
        this.fh = await fsp.open(this.file, 'r');
      } catch (e) {
        throw new UserError(`${this.file}: cannot open dataset shard (${(e as Error).message}); the dataset is incomplete`);
      }
      let r: RecordBatchReader;
      try {
        r = await RecordBatchReader.from(this.fh);
        await r.open();
      } catch (e) {
        throw new UserError(
          `${this.file}: not a readable Arrow IPC file (${(e as Error).message}); run 'coordinator data inspect' on the dataset`,
        );
      }
      if (!r.isFile()) throw new UserError(`${this.file}: an Arrow stream, not an Arrow IPC file with a record-batch index`);
      const fr = r as AsyncRecordBatchFileReader;
      if (fr.numRecordBatches !== this.info.batches)
        throw new UserError(`${this.file}: holds ${fr.numRecordBatches} record batches, manifest.json says ${this.info.batches}`);
      return fr;
    })();
    return this.reader;
  }

  /** `length` bytes at `position` into `into` at `offset`; a short read means a truncated file. */
  private async readAt(into: Uint8Array, offset: number, length: number, position: number, what: string): Promise<void> {
    const { bytesRead } = await this.fh!.read(into, offset, length, position);
    if (bytesRead !== length)
      throw new UserError(`${this.file}: ${what} ends past the end of the file (truncated?); run 'coordinator data inspect'`);
  }

  readBatch(index: number, expectRows: number): Promise<CachedBatch> {
    const job = this.queue.then(async () => {
      const r = await this.open();
      try {
        const part = await this.readSmallColumns(r, index, expectRows);
        if (part) return part;
      } catch (e) {
        if (e instanceof UserError) throw e;
        throw new UserError(`${this.file}: record batch ${index} unreadable (${(e as Error).message}); run 'coordinator data inspect'`);
      }
      let rb: Awaited<ReturnType<typeof r.readRecordBatch>>;
      try {
        rb = await r.readRecordBatch(index);
      } catch (e) {
        throw new UserError(`${this.file}: record batch ${index} unreadable (${(e as Error).message}); run 'coordinator data inspect'`);
      }
      if (!rb) throw new UserError(`${this.file}: record batch ${index} missing`);
      if (rb.numRows !== expectRows)
        throw new UserError(`${this.file}: record batch ${index} has ${rb.numRows} rows, expected ${expectRows}`);
      imageSizeOf(rb.schema);
      const cols = recordBatchColumns(rb);
      return { cols, pixelsAt: null, bytes: cols.images.byteLength + cols.labels.byteLength + 64 * cols.n };
    });
    this.queue = job.catch(() => undefined);
    return job;
  }

  /**
   * The record batch's columns after the pixels, from its message's buffer list, and where its
   * pixels start; null when the batch is not laid out as ShardWriter writes it (compressed, with
   * nulls, other columns), for the caller to decode it whole.
   */
  private async readSmallColumns(r: AsyncRecordBatchFileReader, index: number, rows: number): Promise<CachedBatch | null> {
    const block = r.footer?.getRecordBatch(index);
    if (!block) throw new UserError(`${this.file}: record batch ${index} missing`);
    const fields = r.schema.fields.map((f) => f.name);
    const names = [...REQUIRED_COLUMNS, ...(fields.length > REQUIRED_COLUMNS.length ? ['report'] : [])];
    if (fields.length !== names.length || fields.some((f, i) => f !== names[i])) return null;
    const { height, width, labelCount } = imageSizeOf(r.schema);
    const hw = height * width;
    // The message: optional continuation marker (-1), int32 metadata length, flatbuffer Message.
    const head = new Uint8Array(block.metaDataLength);
    await this.readAt(head, 0, head.length, block.offset, `record batch ${index}'s metadata`);
    const dv = new DataView(head.buffer);
    const at = dv.getInt32(0, true) === -1 ? 8 : 4;
    const len = dv.getInt32(at - 4, true);
    if (len <= 0 || at + len > head.length) throw new Error(`metadata length ${len} outside the block of ${head.length} bytes`);
    const msg = Message.decode(head.subarray(at, at + len));
    if (!msg.isRecordBatch()) throw new Error('not a record batch message');
    const h = msg.header();
    if (h.length !== rows) throw new UserError(`${this.file}: record batch ${index} has ${h.length} rows, expected ${rows}`);
    // Buffers in schema order: image (validity), pixels (validity, data), labels (validity),
    // label values (validity, data), then validity, offsets, data of each Utf8 column.
    const nb = 6 + 3 * (fields.length - 2);
    if (h.compression || h.nodes.some((n) => n.nullCount !== 0) || h.buffers.length !== nb) return null;
    const buf = h.buffers;
    if (buf[2]!.length < rows * hw || buf[5]!.length < rows * labelCount * 4) throw new Error('column buffers shorter than the rows');
    const from = buf[3]!.offset;
    const to = Math.max(...buf.slice(3).map((b) => b.offset + b.length));
    if (from % 8 !== 0 || to > msg.bodyLength || buf.slice(3).some((b) => b.offset < from || b.offset % 4 !== 0)) return null;
    const body = block.offset + block.metaDataLength;
    const tail = new Uint8Array(to - from);
    await this.readAt(tail, 0, tail.length, body + from, `record batch ${index}`);
    const view = <T>(T: new (b: ArrayBuffer, o: number, n: number) => T, i: number, n: number) =>
      new T(tail.buffer, buf[i]!.offset - from, n);
    const text = (k: number): ((i: number) => string) => {
      if (buf[6 + 3 * k + 1]!.length < 4 * (rows + 1)) throw new Error(`column '${fields[2 + k]}': offsets buffer shorter than the rows`);
      const valueOffsets = view(Int32Array, 6 + 3 * k + 1, rows + 1);
      const data = view(Uint8Array, 6 + 3 * k + 2, buf[6 + 3 * k + 2]!.length);
      if (valueOffsets[0]! < 0 || valueOffsets[rows]! > data.length)
        throw new Error(`column '${fields[2 + k]}': string offsets past its data`);
      const v = makeVector(makeData({ type: new Utf8(), length: rows, nullCount: 0, valueOffsets, data }));
      return (i) => v.get(i) ?? '';
    };
    const cols: RecordBatchColumns = {
      n: rows,
      height,
      width,
      images: new Uint8Array(0),
      labels: view(Float32Array, 5, rows * labelCount),
      subjectId: text(0),
      studyId: text(1),
      path: text(2),
    };
    if (fields.length > REQUIRED_COLUMNS.length) cols.report = text(3);
    return { cols, pixelsAt: body + buf[2]!.offset, bytes: tail.length + 64 * rows };
  }

  /** Pixels of rows `rows[k]` of a batch whose pixels start at `pixelsAt`, into `out` at `at[k] * hw`. */
  readPixels(pixelsAt: number, hw: number, rows: number[], at: number[], out: Uint8Array): Promise<void> {
    // Runs of consecutive rows (sequential reads, evaluation) are one read each.
    const order = rows.map((_, k) => k).sort((x, y) => rows[x]! - rows[y]!);
    const reads: Promise<void>[] = [];
    for (let s = 0; s < order.length; ) {
      let e = s + 1;
      while (e < order.length && rows[order[e]!]! === rows[order[e - 1]!]! + 1) e++;
      const first = rows[order[s]!]!;
      const what = `the pixels of rows ${first}..${first + e - s - 1}`;
      if (e - s === 1) reads.push(this.readAt(out, at[order[s]!]! * hw, hw, pixelsAt + first * hw, what));
      else {
        const run = order.slice(s, e);
        reads.push(
          (async () => {
            const tmp = new Uint8Array((e - s) * hw);
            await this.readAt(tmp, 0, tmp.length, pixelsAt + first * hw, what);
            run.forEach((k, j) => out.set(tmp.subarray(j * hw, (j + 1) * hw), at[k]! * hw));
          })(),
        );
      }
      s = e;
    }
    return Promise.all(reads).then(() => undefined);
  }

  async close(): Promise<void> {
    await this.queue;
    const fh = this.fh;
    this.fh = null;
    this.reader = null;
    if (fh) await fh.close();
  }
}

class SplitReaderImpl implements SplitReader {
  readonly length: number;
  private readonly shards: ShardHandle[];
  /** Cumulative first row of each shard within the split. */
  private readonly starts: number[];
  private readonly cache = new Map<string, Promise<CachedBatch>>();
  private readonly cacheSize = new Map<string, number>();
  readonly stats = { batches: 0, wholeBatches: 0 };
  private cachedBytes = 0;
  private readonly hw: number;
  private readonly L: number;
  private readonly withReport: boolean;

  constructor(
    dir: string,
    private readonly manifest: Manifest,
    readonly name: SplitName,
    private readonly cacheBytes: number,
  ) {
    const info = manifest.splits[name];
    this.length = info.rows;
    this.shards = info.shards.map((s) => new ShardHandle(path.join(dir, s.file), s));
    this.starts = [];
    let at = 0;
    for (const s of info.shards) {
      this.starts.push(at);
      at += s.rows;
    }
    this.hw = manifest.image.height * manifest.image.width;
    this.L = manifest.labels.length;
    this.withReport = manifest.columns.includes('report');
  }

  /** Shard holding split row `i` (binary search over the cumulative starts). */
  private shardOf(i: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= i) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private batch(shard: number, batch: number): Promise<CachedBatch> {
    const key = `${shard}:${batch}`;
    const hit = this.cache.get(key);
    if (hit) {
      // Refresh recency: Map iteration order is insertion order.
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit;
    }
    const rpb = this.manifest.rowsPerBatch;
    const rows = Math.min(rpb, this.shards[shard]!.info.rows - batch * rpb);
    const h = this.shards[shard]!;
    // A label outside 1, 0, -1, blank would train silently on a wrong target.
    const p = h.readBatch(batch, rows).then((c) => {
      const bad = invalidLabel(c.cols.labels, this.L);
      if (bad)
        throw new UserError(
          `${h.file}: row ${batch * rpb + bad.row} (${c.cols.path(bad.row)}): label '${this.manifest.labels[bad.label]}' is ${bad.value}; labels are 1, 0, -1 or blank: the shard is damaged, run 'coordinator data inspect'`,
        );
      return c;
    });
    this.cache.set(key, p);
    p.then(
      (c) => {
        if (this.cache.get(key) !== p) return;
        this.stats.batches++;
        if (c.pixelsAt === null) this.stats.wholeBatches++;
        this.cacheSize.set(key, c.bytes);
        this.cachedBytes += c.bytes;
        // Evict least recent first; the newest entry stays even when it alone is over the budget.
        for (const k of this.cache.keys()) {
          if (this.cachedBytes <= this.cacheBytes || k === key) break;
          this.evict(k);
        }
      },
      () => this.evict(key),
    );
    return p;
  }

  private evict(key: string): void {
    this.cache.delete(key);
    this.cachedBytes -= this.cacheSize.get(key) ?? 0;
    this.cacheSize.delete(key);
  }

  async read(indices: ArrayLike<number>): Promise<SampleBatch> {
    const n = indices.length;
    const { height, width } = this.manifest.image;
    const hw = this.hw;
    const L = this.L;
    const out: SampleBatch = {
      n,
      height,
      width,
      images: new Uint8Array(n * hw),
      labels: new Float32Array(n * L),
      subjectIds: new Array<string>(n),
      studyIds: new Array<string>(n),
      paths: new Array<string>(n),
    };
    if (this.withReport) out.reports = new Array<string>(n);
    // Group output positions by record batch so each batch is decoded once per call, whatever the
    // cache size, and copied out before the next one is needed.
    const rpb = this.manifest.rowsPerBatch;
    const groups = new Map<string, { shard: number; batch: number; pos: number[]; rows: number[] }>();
    for (let j = 0; j < n; j++) {
      const i = indices[j]!;
      if (!Number.isInteger(i) || i < 0 || i >= this.length)
        throw new RangeError(`${this.name} split: index ${i} outside 0..${this.length - 1}`);
      const shard = this.shardOf(i);
      const local = i - this.starts[shard]!;
      const batch = Math.floor(local / rpb);
      const key = `${shard}:${batch}`;
      let g = groups.get(key);
      if (!g) groups.set(key, (g = { shard, batch, pos: [], rows: [] }));
      g.pos.push(j);
      g.rows.push(local - batch * rpb);
    }
    const pixels: Promise<void>[] = [];
    for (const g of groups.values()) {
      const { cols: d, pixelsAt } = await this.batch(g.shard, g.batch);
      if (pixelsAt !== null) {
        const p = this.shards[g.shard]!.readPixels(pixelsAt, hw, g.rows, g.pos, out.images);
        p.catch(() => undefined); // rejections surface through Promise.all below, not as unhandled
        pixels.push(p);
      }
      for (let k = 0; k < g.pos.length; k++) {
        const j = g.pos[k]!;
        const r = g.rows[k]!;
        if (pixelsAt === null) out.images.set(d.images.subarray(r * hw, (r + 1) * hw), j * hw);
        out.labels.set(d.labels.subarray(r * L, (r + 1) * L), j * L);
        out.subjectIds[j] = d.subjectId(r);
        out.studyIds[j] = d.studyId(r);
        out.paths[j] = d.path(r);
        if (out.reports) out.reports[j] = d.report?.(r) ?? '';
      }
    }
    await Promise.all(pixels);
    return out;
  }

  async close(): Promise<void> {
    this.cache.clear();
    for (const s of this.shards) await s.close();
  }
}
