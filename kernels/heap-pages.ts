import { readFileSync } from 'node:fs';
import { shmNative } from '../native/addon.js';

/**
 * Transparent huge pages for the wasm backend's heap. The step's tensors (hundreds of MiB of
 * heap) are read in strided panels by the GEMM's packing and in rows by everything else; on 4 KiB
 * pages that walks far more pages than the TLB holds. Linux backs memory with 2 MiB pages only
 * where asked (THP policy "madvise", the common default), and neither V8 nor emscripten asks, so
 * the heap is advised here, once, right after the backend starts: the advice covers the range the
 * memory can grow into (V8 reserves it up front on 64-bit hosts), so pages added later fault in
 * huge. The gain is measured in docs/performance.md, "Huge pages for the heap".
 */

/** The most a 32-bit WebAssembly memory can grow to: what the advice covers from the heap's start, and the ceiling of every wasm run. */
export const WASM32_MAX_BYTES = 2 ** 32;

/** The kernel's THP policy ('always', 'madvise', 'never'), or null where there is none to read (not Linux). */
export function thpPolicy(file = '/sys/kernel/mm/transparent_hugepage/enabled'): string | null {
  try {
    return /\[(\w+)\]/.exec(readFileSync(file, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/**
 * Ask for huge pages under `memory` (a WebAssembly.Memory) where that helps; returns what happened,
 * for the backend report. CXR_WASM_HUGEPAGES=0 leaves the heap on the kernel's default pages (to
 * measure the difference).
 */
export function adviseHeapHugePages(memory: unknown): string {
  if (process.env.CXR_WASM_HUGEPAGES === '0') return 'heap on default pages (CXR_WASM_HUGEPAGES=0)';
  const policy = thpPolicy();
  if (policy === null) return 'heap on default pages (no transparent huge pages on this OS)';
  if (policy === 'never') return "heap on 4 KiB pages (transparent huge pages are 'never' on this host)";
  if (policy === 'always') return 'heap on transparent huge pages (THP always)';
  const buffer = (memory as { buffer?: unknown } | undefined)?.buffer;
  if (!(buffer instanceof ArrayBuffer)) return 'heap on 4 KiB pages (the backend exposes no plain memory to advise)';
  const { addon, why } = shmNative();
  if (!addon) return `heap on 4 KiB pages (${why})`;
  const err = addon.hugePages(buffer, WASM32_MAX_BYTES);
  return err === 0 ? 'heap advised onto 2 MiB transparent huge pages' : `heap on 4 KiB pages (madvise failed, errno ${err})`;
}
