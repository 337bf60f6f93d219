import { createRequire } from 'node:module';
import * as path from 'node:path';
import { packageRoot } from '../shared/util/paths.js';

/** The optional addon of native/shm_map.c, built by `npm install` (native/build.mjs). */
export interface ShmNative {
  /** An ArrayBuffer over mmap(MAP_SHARED) of the whole file behind `fd`; unmapped when collected. */
  map(fd: number, bytes: number): ArrayBuffer;
  /** dst[i] = ((inputs[0][i] + inputs[1][i]) + inputs[2][i]) + ... in fp32, in this order. */
  sum(dst: Float32Array, inputs: Float32Array[]): void;
  /**
   * madvise(MADV_HUGEPAGE) over the whole 2 MiB pages of [buffer's start, start + bytes), which may
   * reach past the buffer into memory reserved for it to grow into: 0, or the errno (ENOSYS where the OS has no such advice).
   */
  hugePages(buffer: ArrayBuffer, bytes: number): number;
}

export const NATIVE_ADDON = path.join(packageRoot, 'native', 'build', 'Release', 'shm_map.node');

let loaded: { addon: ShmNative | null; why: string } | null = null;

/** The addon, or null and why not (not built on this machine, or not loadable). */
export function shmNative(): { addon: ShmNative | null; why: string } {
  if (!loaded) {
    try {
      loaded = { addon: createRequire(import.meta.url)(NATIVE_ADDON) as ShmNative, why: 'loaded' };
    } catch (e) {
      loaded = {
        addon: null,
        why: `the shared-memory addon is not available (${(e as Error).message.split('\n')[0]}; run npm install with a C compiler)`,
      };
    }
  }
  return loaded;
}
