import { rmSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../shared/util/errors.js';
import { fsyncDir, tempSibling } from '../../shared/util/fs-atomic.js';
import { MANIFEST_FILE } from '../../shared/dataset/manifest.js';

/**
 * Build a directory atomically: `fill` writes into a temp sibling of `out`, which is renamed to
 * `out` only when it returns. On any error (or Ctrl-C) the temp directory is removed, so a failed
 * run leaves neither a manifest nor partial shards behind.
 *
 * An existing `out` is refused unless `overwrite`; even then only a dataset (it has a
 * manifest.json) or an empty directory is replaced, so a mistyped `--out ~` cannot delete a home.
 */
export async function buildDirAtomically<T>(out: string, overwrite: boolean, fill: (tmp: string) => Promise<T>): Promise<T> {
  const target = path.resolve(out);
  const existing = await checkOutputDir(out, overwrite);
  const tmp = await makeTempSibling(out, target);
  const onSignal = (sig: NodeJS.Signals) => {
    rmSync(tmp, { recursive: true, force: true });
    process.stderr.write(`\ncoordinator: interrupted (${sig}); removed the partial output ${tmp}\n`);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const result = await fill(tmp);
    await fsyncDir(tmp);
    if (existing) {
      const old = tempSibling(target);
      await fsp.rename(target, old);
      await fsp.rename(tmp, target);
      await fsp.rm(old, { recursive: true, force: true });
    } else {
      await fsp.rename(tmp, target);
    }
    await fsyncDir(path.dirname(target));
    return result;
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

/**
 * Refuse an `--out` that cannot be used, before any slow work: it exists without `overwrite`,
 * it is not a dataset, or its parent is not writable. Returns whether it exists.
 */
export async function checkOutputDir(out: string, overwrite: boolean): Promise<boolean> {
  const target = path.resolve(out);
  const existing = await fsp.stat(target).catch(() => null);
  if (existing) {
    if (!overwrite) throw new UserError(`--out ${out} already exists: pass --overwrite to replace it, or choose another directory`);
    if (!existing.isDirectory()) throw new UserError(`--out ${out} exists and is not a directory: remove it or choose another path`);
    const entries = await fsp.readdir(target);
    if (entries.length > 0 && !entries.includes(MANIFEST_FILE))
      throw new UserError(
        `--out ${out} is a non-empty directory without ${MANIFEST_FILE} (not a dataset): refusing to replace it even with --overwrite`,
      );
  }
  // Creating (and removing) the temp sibling proves the location is writable.
  await fsp.rm(await makeTempSibling(out, target), { recursive: true, force: true });
  return existing !== null;
}

async function makeTempSibling(out: string, target: string): Promise<string> {
  const tmp = tempSibling(target);
  try {
    await fsp.mkdir(path.dirname(target), { recursive: true });
    await fsp.mkdir(tmp);
  } catch (e) {
    throw new UserError(`--out ${out}: cannot create the output directory (${(e as Error).message}); choose a writable location`);
  }
  return tmp;
}
