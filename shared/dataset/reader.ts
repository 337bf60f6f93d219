import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { RecordBatchReader, type AsyncRecordBatchFileReader } from 'apache-arrow';
import { UserError } from '../errors.js';
import { fromRecordBatch, imageSizeOf, type SampleBatch } from './columns.js';
import { readManifest, SPLITS, type Manifest, type ShardInfo, type SplitName } from './manifest.js';

export type { SampleBatch } from './columns.js';
export type { Manifest, SplitName } from './manifest.js';

/**
 * Random access to one split by index, through the record-batch index in each Arrow file's
 * footer: a read loads only the record batches that hold the requested rows.
 *
 * Peak memory of a reader: the open footers (a few hundred bytes per record batch), the LRU of
 * decoded record batches (`cacheBatches` x rowsPerBatch x (H*W + 4*L + ids), about 2 MiB of
 * pixels per batch with the default batch size, so 16 MiB for the default 8), plus the returned
 * SampleBatch. Never the split, never a whole shard.
 */
export interface SplitReader {
  readonly name: SplitName;
  readonly length: number;
  /** Samples at `indices` (any order, repeats allowed), in that order, copied into fresh arrays. */
  read(indices: ArrayLike<number>): Promise<SampleBatch>;
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
  /** Decoded record batches kept per split (default 8). */
  cacheBatches?: number;
}

/** Open a dataset directory: validates manifest.json; shard files open on first use. */
export async function openDataset(dir: string, opts: OpenOptions = {}): Promise<Dataset> {
  const manifest = await readManifest(dir);
  const readers = new Map<SplitName, SplitReaderImpl>();
  for (const s of SPLITS) readers.set(s, new SplitReaderImpl(dir, manifest, s, opts.cacheBatches ?? 8));
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

interface DecodedBatch {
  images: Uint8Array;
  labels: Float32Array;
  subjectIds: string[];
  studyIds: string[];
  paths: string[];
  reports?: string[];
}

/** One shard file: its Arrow reader, opened lazily, with reads serialised (the reader seeks). */
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
      let r;
      try {
        r = await RecordBatchReader.from(this.fh);
        await r.open();
      } catch (e) {
        throw new UserError(`${this.file}: not a readable Arrow IPC file (${(e as Error).message}); run 'coordinator data inspect' on the dataset`);
      }
      if (!r.isFile()) throw new UserError(`${this.file}: an Arrow stream, not an Arrow IPC file with a record-batch index`);
      const fr = r as AsyncRecordBatchFileReader;
      if (fr.numRecordBatches !== this.info.batches)
        throw new UserError(`${this.file}: holds ${fr.numRecordBatches} record batches, manifest.json says ${this.info.batches}`);
      return fr;
    })();
    return this.reader;
  }

  readBatch(index: number, expectRows: number): Promise<DecodedBatch> {
    const job = this.queue.then(async () => {
      const r = await this.open();
      let rb;
      try {
        rb = await r.readRecordBatch(index);
      } catch (e) {
        throw new UserError(`${this.file}: record batch ${index} unreadable (${(e as Error).message}); run 'coordinator data inspect'`);
      }
      if (!rb) throw new UserError(`${this.file}: record batch ${index} missing`);
      if (rb.numRows !== expectRows) throw new UserError(`${this.file}: record batch ${index} has ${rb.numRows} rows, expected ${expectRows}`);
      imageSizeOf(rb.schema);
      const b = fromRecordBatch(rb);
      const d: DecodedBatch = { images: b.images, labels: b.labels, subjectIds: b.subjectIds, studyIds: b.studyIds, paths: b.paths };
      if (b.reports) d.reports = b.reports;
      return d;
    });
    this.queue = job.catch(() => undefined);
    return job;
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
  private readonly cache = new Map<string, Promise<DecodedBatch>>();
  private readonly hw: number;
  private readonly L: number;
  private readonly withReport: boolean;

  constructor(
    dir: string,
    private readonly manifest: Manifest,
    readonly name: SplitName,
    private readonly cacheBatches: number,
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

  private batch(shard: number, batch: number): Promise<DecodedBatch> {
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
    const p = this.shards[shard]!.readBatch(batch, rows);
    p.catch(() => this.cache.delete(key));
    this.cache.set(key, p);
    while (this.cache.size > this.cacheBatches) this.cache.delete(this.cache.keys().next().value!);
    return p;
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
    for (const g of groups.values()) {
      const d = await this.batch(g.shard, g.batch);
      for (let k = 0; k < g.pos.length; k++) {
        const j = g.pos[k]!;
        const r = g.rows[k]!;
        out.images.set(d.images.subarray(r * hw, (r + 1) * hw), j * hw);
        out.labels.set(d.labels.subarray(r * L, (r + 1) * L), j * L);
        out.subjectIds[j] = d.subjectIds[r]!;
        out.studyIds[j] = d.studyIds[r]!;
        out.paths[j] = d.paths[r]!;
        if (out.reports) out.reports[j] = d.reports?.[r] ?? '';
      }
    }
    return out;
  }

  async close(): Promise<void> {
    this.cache.clear();
    for (const s of this.shards) await s.close();
  }
}
