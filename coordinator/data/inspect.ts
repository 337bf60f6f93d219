import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { RecordBatchReader } from 'apache-arrow';
import { readManifest, SPLITS, type Manifest, type SplitName } from '../../shared/dataset/manifest.js';
import { sha256File } from '../../shared/dataset/verify.js';

export interface ShardCheck {
  split: SplitName;
  file: string;
  ok: boolean;
  /** Why not ok: size, checksum or Arrow structure. */
  problem?: string;
}

export interface InspectReport {
  dir: string;
  manifest: Manifest;
  shards: ShardCheck[];
  ok: boolean;
}

/** Verify every shard against the manifest: size, sha256, and the record-batch count in the footer. */
export async function inspectDataset(dir: string): Promise<InspectReport> {
  const manifest = await readManifest(dir);
  const shards: ShardCheck[] = [];
  for (const split of SPLITS) {
    for (const s of manifest.splits[split].shards) {
      const file = path.join(dir, s.file);
      const check: ShardCheck = { split, file: s.file, ok: false };
      shards.push(check);
      const st = await fsp.stat(file).catch(() => null);
      if (!st) {
        check.problem = 'missing';
        continue;
      }
      if (st.size !== s.bytes) {
        check.problem = `${st.size} bytes, manifest says ${s.bytes}`;
        continue;
      }
      const sum = await sha256File(file);
      if (sum !== s.sha256) {
        check.problem = `sha256 ${sum.slice(0, 12)}..., manifest says ${s.sha256.slice(0, 12)}...`;
        continue;
      }
      const fh = await fsp.open(file, 'r');
      try {
        const r = await RecordBatchReader.from(fh);
        await r.open();
        const n = r.isFile() ? r.numRecordBatches : -1;
        if (n !== s.batches) check.problem = `${n} record batches in the footer, manifest says ${s.batches}`;
        else check.ok = true;
      } catch (e) {
        check.problem = `not a readable Arrow IPC file (${(e as Error).message})`;
      } finally {
        await fh.close();
      }
    }
  }
  return { dir, manifest, shards, ok: shards.every((s) => s.ok) };
}
