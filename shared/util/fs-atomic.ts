import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

/** A sibling temp name: same directory, so the final rename never crosses file systems. */
export function tempSibling(target: string): string {
  const dir = path.dirname(target);
  return path.join(dir, `.${path.basename(target)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** fsync a directory so that a rename inside it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Create `target` so that readers see either the old content or the complete new one: `fill`
 * writes a temp sibling, which is then fsynced, renamed over `target`, and the directory fsynced.
 * If `fill` or any step fails, the temp file is removed and `target` is untouched.
 */
export async function writeAtomically<T>(target: string, fill: (fh: fsp.FileHandle) => Promise<T>): Promise<T> {
  const tmp = tempSibling(target);
  const fh = await fsp.open(tmp, 'wx');
  let result: T;
  try {
    result = await fill(fh);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, target);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(path.dirname(target));
  return result;
}

/** Write a whole file atomically (see writeAtomically). */
export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  await writeAtomically(target, (fh) => fh.writeFile(data));
}

/** Write JSON atomically, pretty-printed with a trailing newline. */
export async function writeJsonAtomic(target: string, value: unknown): Promise<void> {
  await writeFileAtomic(target, JSON.stringify(value, null, 2) + '\n');
}
