import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { diskFull } from '../util/errors.js';
import { fsyncDir, writeJsonAtomic } from '../util/fs-atomic.js';
import type { ParamLayout } from '../params.js';
import { shardRange } from '../shard.js';
import { packing } from '../trainable.js';
import { CHECKPOINT_MANIFEST_FILE, CHECKPOINTS_DIR } from '../run/files.js';
import {
  PACKED_SHARD_VERSION,
  STEP_DIR_RE,
  SHARD_HEADER_BYTES,
  SHARD_VERSION,
  decodeHeader,
  layoutHash,
  shardFileName,
  stepDirName,
} from './format.js';
import type { ShardWritten } from './shard-writer.js';

export const MANIFEST_FORMAT = 'cxr-align-checkpoint';
export const MANIFEST_VERSION = 1;

const shardRecord = z.object({
  file: z.string(),
  rank: z.number().int().nonnegative(),
  start: z.number().int().nonnegative(),
  end: z.number().int().nonnegative(),
  bytes: z.number().int().positive(),
  digest: z.string().regex(/^[0-9a-f]{64}$/),
});

const manifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  version: z.literal(MANIFEST_VERSION),
  step: z.number().int().nonnegative(),
  epoch: z.number().int().nonnegative(),
  sampler: z.unknown(),
  rng: z.unknown(),
  config: z.unknown(),
  world: z.number().int().positive(),
  layout: z.object({
    hash: z.string(),
    total: z.number().int().nonnegative(),
    entries: z.array(z.object({ name: z.string(), shape: z.array(z.number().int().nonnegative()), decay: z.boolean() })),
  }),
  /**
   * Entries trained with no optimizer state (--freeze): the shards' m and v are ranges of the
   * packed vector of the other entries (shared/trainable.ts). Absent: every entry has moments.
   */
  frozen: z.array(z.string()).optional(),
  shards: z.array(shardRecord),
  created: z.string(),
  meta: z.unknown().optional(),
});

export type CheckpointManifest = z.infer<typeof manifestSchema>;
export type ShardRecord = z.infer<typeof shardRecord>;

/** What the coordinator knows at commit time besides the shard reports. */
export interface CommitInput {
  readonly step: number;
  readonly epoch: number;
  /** Sampler position, RNG states, resolved config: opaque JSON, handed back unchanged at resume. */
  readonly sampler: unknown;
  readonly rng: unknown;
  readonly config: unknown;
  readonly layout: ParamLayout;
  readonly world: number;
  /** Names of the entries the shards hold no moments for (--freeze); absent or empty: none. */
  readonly frozen?: readonly string[];
  /** Every rank's report from its writer (ShardWritten), in any order. */
  readonly shards: readonly Pick<ShardWritten, 'file' | 'rank' | 'start' | 'end' | 'bytes' | 'digest'>[];
  readonly meta?: unknown;
}

/** `RUN/checkpoints`: where a run keeps its step directories. */
export function checkpointsDir(runDir: string): string {
  return path.join(runDir, CHECKPOINTS_DIR);
}

export function stepDir(checkpointsRoot: string, step: number): string {
  return path.join(checkpointsRoot, stepDirName(step));
}

/**
 * Phase two of a save: check that every rank's shard is in place (name, size, header), fsync,
 * drop leftovers that are not part of this checkpoint (a crashed save's temp files, shards of
 * another world size), then write manifest.json atomically. Only after this returns does the
 * checkpoint exist for loaders.
 */
export async function commitCheckpoint(stepDirPath: string, c: CommitInput): Promise<CheckpointManifest> {
  const hash = layoutHash(c.layout);
  const pk = c.frozen?.length ? packing(c.layout, c.frozen) : null;
  const frozen = pk ? [...pk.frozen] : null;
  const packed = pk ? pk.size : c.layout.total;
  const byRank = new Map(c.shards.map((s) => [s.rank, s]));
  const shards: ShardRecord[] = [];
  for (let r = 0; r < c.world; r++) {
    const s = byRank.get(r);
    if (!s) throw new Error(`commit step ${c.step}: no shard reported by rank ${r} of ${c.world}`);
    const want = shardRange(c.layout.total, c.world, r);
    if (s.start !== want.start || s.end !== want.end)
      throw new Error(`commit step ${c.step}: rank ${r} wrote [${s.start}, ${s.end}), expected [${want.start}, ${want.end})`);
    if (s.file !== shardFileName(r, c.world)) throw new Error(`commit step ${c.step}: rank ${r} reported file '${s.file}'`);
    const p = path.join(stepDirPath, s.file);
    const fh = await fsp.open(p, 'r');
    try {
      const st = await fh.stat();
      if (st.size !== s.bytes) throw new Error(`commit step ${c.step}: ${p} has ${st.size} bytes, rank ${r} reported ${s.bytes}`);
      const head = Buffer.alloc(SHARD_HEADER_BYTES);
      await fh.read(head, 0, SHARD_HEADER_BYTES, 0);
      const h = decodeHeader(head, p);
      if (h.step !== c.step || h.rank !== r || h.world !== c.world || h.layoutHash !== hash)
        throw new Error(`commit step ${c.step}: ${p} holds step ${h.step} rank ${h.rank}/${h.world} of another layout or save`);
      const mr = shardRange(packed, c.world, r);
      if (h.version !== (pk ? PACKED_SHARD_VERSION : SHARD_VERSION) || h.sectionBytes[1] !== (mr.end - mr.start) * 4)
        throw new Error(
          `commit step ${c.step}: ${p} holds ${h.sectionBytes[1] / 4} moments (format version ${h.version}), expected ${mr.end - mr.start} (${frozen ? `${frozen.length} entries frozen` : 'none frozen'})`,
        );
    } finally {
      await fh.close();
    }
    shards.push({ file: s.file, rank: r, start: s.start, end: s.end, bytes: s.bytes, digest: s.digest });
  }
  if (byRank.size !== c.world) throw new Error(`commit step ${c.step}: ${byRank.size} shard reports for world ${c.world}`);
  const keep = new Set(shards.map((s) => s.file));
  for (const name of await fsp.readdir(stepDirPath)) {
    if (!keep.has(name)) await fsp.rm(path.join(stepDirPath, name), { recursive: true, force: true });
  }
  // Every directory entry on the way down must be durable before the manifest makes it count.
  await fsyncDir(stepDirPath);
  await fsyncDir(path.dirname(stepDirPath));
  await fsyncDir(path.dirname(path.dirname(stepDirPath)));
  const manifest: CheckpointManifest = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    step: c.step,
    epoch: c.epoch,
    sampler: c.sampler ?? null,
    rng: c.rng ?? null,
    config: c.config ?? null,
    world: c.world,
    layout: { hash, total: c.layout.total, entries: c.layout.entries.map((e) => ({ name: e.name, shape: [...e.shape], decay: e.decay })) },
    ...(frozen ? { frozen } : {}),
    shards,
    created: new Date().toISOString(),
    ...(c.meta !== undefined ? { meta: c.meta } : {}),
  };
  const target = path.join(stepDirPath, CHECKPOINT_MANIFEST_FILE);
  await writeJsonAtomic(target, manifest).catch((e: unknown) => {
    throw diskFull(
      e,
      target,
      `step ${c.step} is not committed and the previous committed checkpoint in ${path.dirname(stepDirPath)} is intact: free space, then resume the run`,
    );
  });
  return manifest;
}

/** Parse a step directory's manifest; throws a plain Error with the reason (callers wrap it). */
export async function readManifest(stepDirPath: string): Promise<CheckpointManifest> {
  const file = path.join(stepDirPath, CHECKPOINT_MANIFEST_FILE);
  const text = await fsp.readFile(file, 'utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const parsed = manifestSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`${file}: invalid checkpoint manifest at '${issue.path.join('.')}': ${issue.message}`);
  }
  return parsed.data;
}

export interface StepDirInfo {
  readonly step: number;
  readonly dir: string;
  /** manifest.json present: the save finished its commit. */
  readonly committed: boolean;
}

/** Step directories under a checkpoints directory, oldest first. */
export async function listCheckpoints(checkpointsRoot: string): Promise<StepDirInfo[]> {
  let names: string[];
  try {
    names = await fsp.readdir(checkpointsRoot);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: StepDirInfo[] = [];
  for (const name of names) {
    const m = STEP_DIR_RE.exec(name);
    if (!m) continue;
    const dir = path.join(checkpointsRoot, name);
    out.push({ step: Number(m[1]), dir, committed: existsSync(path.join(dir, CHECKPOINT_MANIFEST_FILE)) });
  }
  return out.sort((a, b) => a.step - b.step);
}

/** Delete a step directory so that no crash midway can leave it looking committed: manifest first. */
async function removeStepDir(dir: string): Promise<void> {
  await fsp.rm(path.join(dir, CHECKPOINT_MANIFEST_FILE), { force: true });
  await fsyncDir(dir).catch(() => {});
  await fsp.rm(dir, { recursive: true, force: true });
}

/**
 * Retention after a commit: keep the newest `keep` committed checkpoints (never fewer than one),
 * delete older committed ones, and delete uncommitted directories older than the newest commit
 * (leftovers of crashed saves). Uncommitted directories newer than it may be a save in progress
 * and are left alone. Returns the deleted directories.
 */
export async function pruneCheckpoints(checkpointsRoot: string, keep: number): Promise<string[]> {
  const all = await listCheckpoints(checkpointsRoot);
  const committed = all.filter((c) => c.committed);
  if (committed.length === 0) return [];
  const newest = committed[committed.length - 1]!.step;
  const k = Math.max(1, Math.floor(keep));
  const doomed = [...committed.slice(0, Math.max(0, committed.length - k)), ...all.filter((c) => !c.committed && c.step < newest)];
  for (const c of doomed) await removeStepDir(c.dir);
  if (doomed.length) await fsyncDir(checkpointsRoot);
  return doomed.map((c) => c.dir);
}

/**
 * At start-up (no save can be in progress): delete every uncommitted step directory, so a save
 * that reuses a crashed save's step starts from an empty directory. Returns the deleted ones.
 */
export async function removeUncommitted(checkpointsRoot: string): Promise<string[]> {
  const doomed = (await listCheckpoints(checkpointsRoot)).filter((c) => !c.committed);
  for (const c of doomed) await fsp.rm(c.dir, { recursive: true, force: true });
  if (doomed.length) await fsyncDir(checkpointsRoot);
  return doomed.map((c) => c.dir);
}
