import { existsSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { UserError, errorMessage } from '../util/errors.js';
import { buildLayout, layoutMismatch, type ParamLayout } from '../params.js';
import { shardRange, shardRanges, type ShardRange } from '../shard.js';
import { carryOver, packing, type Packing, type Piece } from '../trainable.js';
import { STEP_DIR_RE, layoutHash } from './format.js';
import { CHECKPOINT_MANIFEST_FILE } from '../run/files.js';
import { checkpointsDir, listCheckpoints, readManifest, type CheckpointManifest } from './manifest.js';
import { ShardReader } from './shard-reader.js';

/** A checkpoint whose bytes fail their checks: resuming from a run directory falls back past it. */
export class CheckpointCorruptError extends UserError {}

export interface ResolveOptions {
  /**
   * The model this run builds: the checkpoint must have the same names and shapes. 'checkpoint':
   * take the saved layout as it is (tools such as export that have no model of their own).
   */
  readonly layout: ParamLayout | 'checkpoint';
  /**
   * Config values that must equal the saved resolved config (dotted keys into `manifest.config`,
   * e.g. { 'model.preset': 'vit-s16', labelSet: 'chexpert14' }); the first difference is an error.
   */
  readonly requireConfig?: Readonly<Record<string, unknown>>;
  /** Called with a sentence for each checkpoint skipped while falling back. */
  readonly onWarning?: (message: string) => void;
}

export interface LoadOptions extends ResolveOptions {
  /** The world this run has: m and v come back for shardRange(total, world, rank). */
  readonly world: number;
  readonly rank: number;
  /** 'full' (default): the whole parameter vector; 'shard': only this rank's range; 'none'. */
  readonly params?: 'full' | 'shard' | 'none';
  /** false: skip the AdamW moments (m and v come back empty), e.g. for export or evaluation. */
  readonly moments?: boolean;
  /**
   * The entries this run trains with no moments (--freeze): m and v come back for this rank's
   * range of the packed vector of the others (shared/trainable.ts), carried over from the saved
   * moments where the checkpoint has them and zero for entries it froze. Absent: none.
   */
  readonly frozen?: readonly string[];
}

export interface LoadedCheckpoint {
  readonly dir: string;
  readonly manifest: CheckpointManifest;
  /** The saved layout (equal to the caller's when one was given). */
  readonly layout: ParamLayout;
  readonly step: number;
  readonly epoch: number;
  /** This rank's range in the NEW world. */
  readonly range: ShardRange;
  /** Elements the `params` array covers: [0, total) for 'full', `range` for 'shard'. */
  readonly paramsRange: ShardRange;
  /** Elements of the packed trainable vector `m` and `v` cover (`range` when nothing is frozen). */
  readonly momentsRange: ShardRange;
  readonly params: Float32Array;
  readonly m: Float32Array;
  readonly v: Float32Array;
  /** The same rank's extra state when the world size is unchanged, else null. */
  readonly extra: Uint8Array | null;
  /** Newer committed checkpoints that failed their checks and were skipped. */
  readonly skipped: readonly string[];
}

/**
 * The step directories a path names, newest first: a step directory names itself; a run
 * directory (or its `checkpoints/`) names its committed checkpoints. `single` says fallback is off.
 */
export async function checkpointCandidates(p: string): Promise<{ dirs: string[]; single: boolean }> {
  const abs = path.resolve(p);
  if (!existsSync(abs)) throw new UserError(`checkpoint path ${abs} does not exist`);
  if (!statSync(abs).isDirectory())
    throw new UserError(`checkpoint path ${abs} is not a directory (give a run directory or a step-NNNNNNN directory)`);
  if (STEP_DIR_RE.test(path.basename(abs)) || existsSync(path.join(abs, CHECKPOINT_MANIFEST_FILE))) {
    if (!existsSync(path.join(abs, CHECKPOINT_MANIFEST_FILE)))
      throw new UserError(
        `${abs} has no ${CHECKPOINT_MANIFEST_FILE}: the save that wrote it never committed, so it cannot be loaded; ` +
          `give the run directory to resume from its latest committed checkpoint`,
      );
    return { dirs: [abs], single: true };
  }
  const root = existsSync(checkpointsDir(abs)) ? checkpointsDir(abs) : abs;
  const all = await listCheckpoints(root);
  const committed = all.filter((c) => c.committed).reverse();
  if (committed.length === 0) {
    const partial = all.length ? ` (${all.map((c) => path.basename(c.dir)).join(', ')} never committed: interrupted saves)` : '';
    throw new UserError(`no committed checkpoint under ${root}${partial}`);
  }
  return { dirs: committed.map((c) => c.dir), single: false };
}

function configValue(config: unknown, key: string): unknown {
  let at: unknown = config;
  for (const part of key.split('.')) {
    if (at === null || typeof at !== 'object') return undefined;
    at = (at as Record<string, unknown>)[part];
  }
  return at;
}

/** Refuse a checkpoint that another model or config wrote (UserError, never a fallback). */
function checkCompatible(dir: string, m: CheckpointManifest, o: ResolveOptions): void {
  const saved = buildLayout(m.layout.entries);
  const diff = o.layout === 'checkpoint' ? null : layoutMismatch(o.layout, saved);
  if (diff) {
    // layoutMismatch speaks of "expected" (this model) and "got" (the checkpoint): say which is which.
    const said = diff
      .replace(/^unexpected extra parameter/, 'the checkpoint has a parameter this model lacks:')
      .replace(/^missing parameter/, 'the checkpoint lacks parameter')
      .replace(/, expected/, ' in the checkpoint, this model has');
    throw new UserError(
      `checkpoint ${dir} does not fit this model: ${said}; resume with the model preset and label set it was trained with`,
    );
  }
  for (const [key, want] of Object.entries(o.requireConfig ?? {})) {
    const got = configValue(m.config, key);
    if (JSON.stringify(got) !== JSON.stringify(want))
      throw new UserError(
        `checkpoint ${dir} was trained with ${key}=${JSON.stringify(got)}, this run has ${key}=${JSON.stringify(want)}; ` +
          `resume with the same ${key} or start a new run`,
      );
  }
}

/** Manifest sanity that does not depend on the current model: corruption if it fails. */
function checkManifest(dir: string, m: CheckpointManifest): void {
  const saved = buildLayout(m.layout.entries);
  if (saved.total !== m.layout.total || layoutHash(saved) !== m.layout.hash)
    throw new Error(`${dir}/${CHECKPOINT_MANIFEST_FILE}: layout hash or total does not match its entries`);
  if (m.shards.length !== m.world) throw new Error(`${dir}/${CHECKPOINT_MANIFEST_FILE}: ${m.shards.length} shards for world ${m.world}`);
  m.shards.forEach((s, r) => {
    const want = shardRange(m.layout.total, m.world, r);
    if (s.rank !== r || s.start !== want.start || s.end !== want.end)
      throw new Error(`${dir}/${CHECKPOINT_MANIFEST_FILE}: shard ${r} has range [${s.start}, ${s.end})`);
  });
  savedPacking(m);
}

/** The packing the checkpoint's moments are in (old checkpoints and runs without --freeze: every entry). */
function savedPacking(m: CheckpointManifest): Packing {
  return packing(buildLayout(m.layout.entries), m.frozen ?? []);
}

async function openShards(dir: string, m: CheckpointManifest, only?: Set<number>): Promise<Map<number, ShardReader>> {
  const out = new Map<number, ShardReader>();
  const moments = shardRanges(savedPacking(m).size, m.world);
  try {
    for (const s of m.shards) {
      if (only && !only.has(s.rank)) continue;
      const file = path.join(dir, s.file);
      if (!existsSync(file)) throw new Error(`${file}: missing (listed in ${CHECKPOINT_MANIFEST_FILE})`);
      const r = await ShardReader.open(file);
      out.set(s.rank, r);
      const h = r.header;
      if (r.bytes !== s.bytes) throw new Error(`${file}: ${r.bytes} bytes, the manifest says ${s.bytes}`);
      if (r.digest !== s.digest)
        throw new Error(
          `${file}: header or block checksums differ from those ${CHECKPOINT_MANIFEST_FILE} recorded (digest ${r.digest}, expected ${s.digest})`,
        );
      if (
        h.rank !== s.rank ||
        h.world !== m.world ||
        h.start !== s.start ||
        h.end !== s.end ||
        h.step !== m.step ||
        h.layoutHash !== m.layout.hash ||
        h.sectionBytes[1] !== (moments[s.rank]!.end - moments[s.rank]!.start) * 4
      )
        throw new Error(`${file}: header (step ${h.step}, rank ${h.rank}/${h.world}) does not match ${CHECKPOINT_MANIFEST_FILE}`);
    }
  } catch (e) {
    for (const r of out.values()) await r.close();
    throw e;
  }
  return out;
}

/** Copy elements [range) of a section out of whichever old shards overlap it; `held`: each old shard's range of the section. */
async function gather(
  readers: Map<number, ShardReader>,
  section: 'params' | 'm' | 'v',
  held: readonly ShardRange[],
  range: ShardRange,
  out = new Float32Array(range.end - range.start),
): Promise<Float32Array> {
  for (const [rank, s] of held.entries()) {
    const a = Math.max(s.start, range.start);
    const b = Math.min(s.end, range.end);
    if (a >= b) continue;
    await readers.get(rank)!.readFloats(section, a, b, out.subarray(a - range.start, b - range.start), s.start);
  }
  return out;
}

/** This rank's range of the current packing's moments: the saved moments of each entry that has them, zero elsewhere. */
async function gatherMoments(
  readers: Map<number, ShardReader>,
  section: 'm' | 'v',
  held: readonly ShardRange[],
  pieces: readonly Piece[],
  n: number,
): Promise<Float32Array> {
  const out = new Float32Array(n);
  for (const p of pieces) await gather(readers, section, held, { start: p.from, end: p.from + p.n }, out.subarray(p.to, p.to + p.n));
  return out;
}

async function withFallback<T>(
  p: string,
  o: ResolveOptions,
  attempt: (dir: string, m: CheckpointManifest) => Promise<T>,
): Promise<{ value: T; skipped: string[] }> {
  const { dirs, single } = await checkpointCandidates(p);
  const skipped: string[] = [];
  const reasons: string[] = [];
  for (const dir of dirs) {
    let manifest: CheckpointManifest;
    try {
      manifest = await readManifest(dir);
      checkManifest(dir, manifest);
    } catch (e) {
      const err = new CheckpointCorruptError(`checkpoint ${dir} is unreadable: ${errorMessage(e)}`);
      if (single) throw err;
      o.onWarning?.(`${err.message}; falling back to the previous committed checkpoint`);
      skipped.push(dir);
      reasons.push(err.message);
      continue;
    }
    checkCompatible(dir, manifest, o);
    try {
      return { value: await attempt(dir, manifest), skipped };
    } catch (e) {
      if (e instanceof UserError && !(e instanceof CheckpointCorruptError)) throw e;
      const err = e instanceof CheckpointCorruptError ? e : new CheckpointCorruptError(`checkpoint ${dir} is corrupt: ${errorMessage(e)}`);
      if (single) throw err;
      o.onWarning?.(`${err.message}; falling back to the previous committed checkpoint`);
      skipped.push(dir);
      reasons.push(err.message);
    }
  }
  throw new CheckpointCorruptError(`no intact committed checkpoint under ${path.resolve(p)}:\n  ${reasons.join('\n  ')}`);
}

/**
 * Load one rank's state for the world it runs in now, resharding from whatever world saved it:
 * the parameters (full vector by default) and the AdamW moments of `shardRange(total, world, rank)`,
 * reading only the byte ranges needed and verifying every block read. `p` is a step directory or a
 * run directory (its newest committed checkpoint; corrupt ones are skipped with a warning).
 *
 * With several ranks, let the coordinator pick the step directory with `resolveCheckpoint` (it
 * verifies every byte, so all ranks fall back together) and give every rank that directory.
 */
export async function loadCheckpoint(p: string, o: LoadOptions): Promise<LoadedCheckpoint> {
  const mode = o.params ?? 'full';
  const moments = o.moments ?? true;
  const { value, skipped } = await withFallback(p, o, async (dir, manifest) => {
    const layout = buildLayout(manifest.layout.entries);
    const range = shardRange(layout.total, o.world, o.rank);
    const saved = savedPacking(manifest);
    const now = packing(layout, o.frozen ?? []);
    const momentsRange = moments ? shardRange(now.size, o.world, o.rank) : { start: 0, end: 0 };
    // Where this rank's moments come from in the saved packed vector (identity when both packings agree).
    const pieces = carryOver(saved, now, momentsRange);
    const held = manifest.shards.map((s) => ({ start: s.start, end: s.end }));
    const heldMoments = shardRanges(saved.size, manifest.world);
    const need = new Set<number>();
    const paramsRange = mode === 'full' ? { start: 0, end: manifest.layout.total } : mode === 'shard' ? range : { start: 0, end: 0 };
    for (const s of manifest.shards) {
      const overlaps = (a: ShardRange, r: ShardRange) => Math.max(a.start, r.start) < Math.min(a.end, r.end);
      const mine = pieces.some((p) => overlaps(heldMoments[s.rank]!, { start: p.from, end: p.from + p.n }));
      if (mine || overlaps(s, paramsRange) || (manifest.world === o.world && s.rank === o.rank)) need.add(s.rank);
    }
    const readers = await openShards(dir, manifest, need);
    try {
      const n = momentsRange.end - momentsRange.start;
      const params = await gather(readers, 'params', held, paramsRange);
      const m = await gatherMoments(readers, 'm', heldMoments, pieces, n);
      const v = await gatherMoments(readers, 'v', heldMoments, pieces, n);
      const extra = manifest.world === o.world ? await readers.get(o.rank)!.readExtra() : null;
      return { dir, manifest, layout, step: manifest.step, epoch: manifest.epoch, range, paramsRange, momentsRange, params, m, v, extra };
    } finally {
      for (const r of readers.values()) await r.close();
    }
  });
  return { ...value, skipped };
}

/**
 * The checkpoint to resume from, chosen once (by the coordinator): compatible with this model and
 * config, and every block of every shard verified against its checksum. From a run directory,
 * corrupt checkpoints are skipped with a warning.
 */
export async function resolveCheckpoint(
  p: string,
  o: ResolveOptions,
): Promise<{ dir: string; manifest: CheckpointManifest; skipped: string[] }> {
  const { value, skipped } = await withFallback(p, o, async (dir, manifest) => {
    await verifyShards(dir, manifest);
    return { dir, manifest };
  });
  return { ...value, skipped };
}

/** Verify every shard of a committed checkpoint: sizes, headers, digests, every block's crc32. */
export async function verifyShards(dir: string, manifest: CheckpointManifest): Promise<void> {
  const readers = await openShards(dir, manifest);
  try {
    for (const s of manifest.shards) {
      const r = readers.get(s.rank)!;
      await r.verifyBlocks();
    }
  } finally {
    for (const r of readers.values()) await r.close();
  }
}
