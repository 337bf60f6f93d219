import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import type { Manifest, SplitName } from './manifest.js';

/** sha256 of a file, read in 1 MiB chunks; `onBytes` hears each chunk's length. */
export async function sha256File(file: string, onBytes?: (n: number) => void): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    onBytes?.((chunk as Buffer).length);
  }
  return h.digest('hex');
}

/** Bytes of the shards of `splits`. */
export function shardBytes(manifest: Manifest, splits: readonly SplitName[]): number {
  return splits.reduce((a, s) => a + manifest.splits[s].shards.reduce((b, x) => b + x.bytes, 0), 0);
}

/**
 * Check every shard of `splits` against manifest.json, size and sha256, before any of it is used:
 * a flipped byte (bad disk, a copy cut short) would otherwise train to other weights without a
 * word. The first bad shard is a UserError naming the file.
 */
export async function verifyShards(
  dir: string,
  manifest: Manifest,
  splits: readonly SplitName[],
  onBytes?: (n: number) => void,
): Promise<void> {
  for (const split of splits)
    for (const s of manifest.splits[split].shards) {
      const file = path.join(dir, s.file);
      const st = await fsp.stat(file).catch(() => null);
      if (!st) throw new UserError(`${file}: dataset shard missing (${split} split); the dataset is incomplete`);
      if (st.size !== s.bytes)
        throw new UserError(`${file}: ${st.size} bytes, manifest.json says ${s.bytes}; the shard is damaged: prepare the dataset again`);
      const sum = await sha256File(file, onBytes);
      if (sum !== s.sha256)
        throw new UserError(
          `${file}: sha256 ${sum.slice(0, 12)}... differs from manifest.json's ${s.sha256.slice(0, 12)}...; the shard is damaged (${split} split): prepare the dataset again or restore the file`,
        );
    }
}
