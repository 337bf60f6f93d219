import { createHash, type Hash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { AsyncByteQueue, RecordBatchFileWriter, type Schema } from 'apache-arrow';
import { datasetSchema, invalidLabel, toRecordBatch, type SampleBatch } from './columns.js';
import { UserError } from '../util/errors.js';
import { writeJsonAtomic } from '../util/fs-atomic.js';
import { MANIFEST_FILE, FORMAT_NAME, FORMAT_VERSION, type Manifest, type ShardInfo, type SplitName, SPLITS } from './manifest.js';

/**
 * Catches the bytes the Arrow writer produces, synchronously, so the shard writer can write
 * them to disk (and hash them) right after each record batch: memory stays at one batch, and the
 * library's unbounded internal queue is never used.
 */
class ChunkSink extends AsyncByteQueue {
  chunks: Uint8Array[] = [];
  override write(value: Uint8Array): void {
    if (value.byteLength > 0) this.chunks.push(value);
  }
  take(): Uint8Array[] {
    const c = this.chunks;
    this.chunks = [];
    return c;
  }
}

/** One sample as handed to the writers. */
export interface Sample {
  image: Uint8Array;
  labels: ArrayLike<number>;
  subjectId: string;
  studyId: string;
  path: string;
  report?: string;
}

/**
 * One Arrow IPC *file* (random access through its footer), written as record batches of exactly
 * `rowsPerBatch` rows (the last one may be shorter), sha256 computed over the bytes as they are
 * written, fsynced on close.
 */
export class ShardWriter {
  private readonly sink = new ChunkSink();
  private readonly writer = new RecordBatchFileWriter();
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;
  private rows = 0;
  private batches = 0;
  private pending: Sample[] = [];

  private constructor(
    readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly schema: Schema,
    private readonly height: number,
    private readonly width: number,
    private readonly labelCount: number,
    private readonly rowsPerBatch: number,
  ) {
    this.writer.reset(this.sink as never, schema);
  }

  static async create(
    file: string,
    schema: Schema,
    height: number,
    width: number,
    labelCount: number,
    rowsPerBatch: number,
  ): Promise<ShardWriter> {
    const fh = await fsp.open(file, 'wx');
    return new ShardWriter(file, fh, schema, height, width, labelCount, rowsPerBatch);
  }

  get rowCount(): number {
    return this.rows + this.pending.length;
  }

  async add(s: Sample): Promise<void> {
    const hw = this.height * this.width;
    if (s.image.length !== hw) throw new RangeError(`${s.path}: image has ${s.image.length} pixels, expected ${hw}`);
    if (s.labels.length !== this.labelCount) throw new RangeError(`${s.path}: ${s.labels.length} labels, expected ${this.labelCount}`);
    const bad = invalidLabel(s.labels, this.labelCount);
    if (bad) throw new UserError(`${s.path}: label ${bad.label} is ${bad.value}; labels are 1, 0, -1 or blank (NaN)`);
    this.pending.push(s);
    if (this.pending.length === this.rowsPerBatch) await this.flushBatch();
  }

  private async flushBatch(): Promise<void> {
    const rows = this.pending;
    this.pending = [];
    if (rows.length === 0) return;
    const n = rows.length;
    const hw = this.height * this.width;
    const L = this.labelCount;
    const b: SampleBatch = {
      n,
      height: this.height,
      width: this.width,
      images: new Uint8Array(n * hw),
      labels: new Float32Array(n * L),
      subjectIds: rows.map((r) => r.subjectId),
      studyIds: rows.map((r) => r.studyId),
      paths: rows.map((r) => r.path),
    };
    if (this.schema.fields.some((f) => f.name === 'report')) b.reports = rows.map((r) => r.report ?? '');
    rows.forEach((r, i) => {
      b.images.set(r.image, i * hw);
      for (let k = 0; k < L; k++) b.labels[i * L + k] = r.labels[k]!;
    });
    this.writer.write(toRecordBatch(b, this.schema));
    this.rows += n;
    this.batches++;
    await this.drain();
  }

  private async drain(): Promise<void> {
    for (const chunk of this.sink.take()) {
      this.hash.update(chunk);
      let off = 0;
      while (off < chunk.byteLength) {
        const { bytesWritten } = await this.fh.write(chunk, off, chunk.byteLength - off);
        off += bytesWritten;
      }
      this.bytes += chunk.byteLength;
    }
  }

  /** Write the last batch and the footer, fsync, close; the shard's manifest entry. */
  async close(): Promise<ShardInfo> {
    try {
      await this.flushBatch();
      this.writer.finish();
      await this.drain();
      await this.fh.sync();
    } finally {
      await this.fh.close();
    }
    return { file: path.basename(this.file), rows: this.rows, batches: this.batches, bytes: this.bytes, sha256: this.hash.digest('hex') };
  }

  /** Give up on this shard (the caller removes the directory). */
  async abort(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

export interface DatasetWriterOptions {
  height: number;
  width: number;
  labelSet: string;
  labels: readonly string[];
  /** Rows per record batch: the unit of random access (default: about 2 MiB of pixels). */
  rowsPerBatch?: number;
  /** Record batches per shard file (default 32). */
  batchesPerShard?: number;
  withReport?: boolean;
}

/** Default rows per record batch: about 2 MiB of pixels, between 16 and 1024 rows. */
export function defaultRowsPerBatch(height: number, width: number): number {
  return Math.max(16, Math.min(1024, Math.round((2 << 20) / (height * width))));
}

/**
 * Writes a whole dataset directory: shards per split (`train-00000.arrow`, ...) and, last, the
 * manifest. The directory must exist and should be a temp directory the caller renames into
 * place, so a failed run leaves nothing that looks like a dataset.
 */
export class DatasetWriter {
  readonly schema: Schema;
  readonly rowsPerBatch: number;
  readonly rowsPerShard: number;
  private readonly open = new Map<SplitName, ShardWriter>();
  private readonly shards: Record<SplitName, ShardInfo[]> = { train: [], val: [], test: [] };
  private readonly patients: Record<SplitName, Set<string>> = { train: new Set(), val: new Set(), test: new Set() };
  private readonly studies: Record<SplitName, Set<string>> = { train: new Set(), val: new Set(), test: new Set() };
  private readonly positives: Record<SplitName, number[]>;

  constructor(
    readonly dir: string,
    readonly opts: DatasetWriterOptions,
  ) {
    this.schema = datasetSchema(opts.height, opts.width, opts.labels.length, opts.withReport ?? false);
    this.rowsPerBatch = opts.rowsPerBatch ?? defaultRowsPerBatch(opts.height, opts.width);
    this.rowsPerShard = this.rowsPerBatch * (opts.batchesPerShard ?? 32);
    const zeros = () => new Array<number>(opts.labels.length).fill(0);
    this.positives = { train: zeros(), val: zeros(), test: zeros() };
  }

  async add(split: SplitName, s: Sample): Promise<void> {
    let w = this.open.get(split);
    if (w && w.rowCount >= this.rowsPerShard) {
      this.shards[split].push(await w.close());
      this.open.delete(split);
      w = undefined;
    }
    if (!w) {
      const file = path.join(this.dir, `${split}-${String(this.shards[split].length).padStart(5, '0')}.arrow`);
      w = await ShardWriter.create(file, this.schema, this.opts.height, this.opts.width, this.opts.labels.length, this.rowsPerBatch);
      this.open.set(split, w);
    }
    this.patients[split].add(s.subjectId);
    this.studies[split].add(s.studyId);
    const pos = this.positives[split];
    for (let k = 0; k < pos.length; k++) if (s.labels[k] === 1) pos[k]!++;
    await w.add(s);
  }

  /** Close every shard and write manifest.json (fsynced, atomically). */
  async finish(extra: Pick<Manifest, 'createdBy' | 'source'>): Promise<Manifest> {
    for (const [split, w] of this.open) this.shards[split].push(await w.close());
    this.open.clear();
    const splits = {} as Manifest['splits'];
    for (const s of SPLITS) {
      splits[s] = {
        rows: this.shards[s].reduce((a, x) => a + x.rows, 0),
        patients: this.patients[s].size,
        studies: this.studies[s].size,
        positives: Object.fromEntries(this.opts.labels.map((l, k) => [l, this.positives[s][k]!])),
        shards: this.shards[s],
      };
    }
    const manifest: Manifest = {
      format: FORMAT_NAME,
      formatVersion: FORMAT_VERSION,
      createdBy: extra.createdBy,
      createdAt: new Date().toISOString(),
      source: extra.source,
      labelSet: this.opts.labelSet,
      labels: [...this.opts.labels],
      image: { height: this.opts.height, width: this.opts.width, channels: 1, dtype: 'uint8' },
      columns: this.schema.fields.map((f) => f.name),
      rowsPerBatch: this.rowsPerBatch,
      splits,
    };
    await writeJsonAtomic(path.join(this.dir, MANIFEST_FILE), manifest);
    return manifest;
  }

  async abort(): Promise<void> {
    for (const w of this.open.values()) await w.abort();
    this.open.clear();
  }
}
