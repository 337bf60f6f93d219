import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import v8 from 'node:v8';
import * as tf from '@tensorflow/tfjs';
import { UserError, errorMessage } from '../shared/util/errors.js';
import { adviseHeapHugePages } from './heap-pages.js';
import { gemmVariants } from './simd/gemm.js';
import { setKernelOptions } from './options.js';
import { wasmGemmVariant } from './tfjs/batch-mat-mul.js';
import { registerWasmGradientKernels } from './tfjs/register.js';
import { noGpuDeviceNode, useWebGpu } from './webgpu.js';

export type BackendChoice = 'auto' | 'tensorflow' | 'webgpu' | 'webgpu-software' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'webgpu', 'webgpu-software', 'wasm', 'cpu'];

export interface BackendInfo {
  /** The tfjs backend name now active ('tensorflow', 'webgpu', 'wasm', 'cpu'). */
  name: string;
  /** Why it was chosen, including what was tried and refused before it. */
  reason: string;
}

const require = createRequire(import.meta.url);

/**
 * The GPU check is done on the host, not through tfjs-node-gpu: that package loads (and silently
 * runs on the CPU) on machines without CUDA, and has no device-listing API.
 */
function nvidiaGpuCount(): number {
  try {
    if (!existsSync('/dev/nvidiactl')) return 0;
    return readdirSync('/proc/driver/nvidia/gpus').length;
  } catch {
    return 0;
  }
}

async function tryImport(pkg: string): Promise<string | null> {
  try {
    await import(pkg);
    return null;
  } catch (e) {
    return errorMessage(e).split('\n')[0]!;
  }
}

/**
 * The SIMD GEMM's fastest build uses relaxed SIMD's f32x4.relaxed_madd (FMA): standard from V8
 * 11.4 (Node 22), behind --experimental-wasm-relaxed-simd in Node 20's V8 11.3, where setting the
 * flag at run time works as long as it comes before the GEMM module is validated and compiled
 * (in wasmReport below, after this). Set only where the engine lacks it;
 * CXR_WASM_RELAXED_SIMD=0 leaves the flag alone and keeps the GEMM on its mul+add build on every
 * engine (to rule FMA out when chasing a numerical difference). Returns what it did, for the report.
 */
function allowRelaxedSimd(): string {
  if (process.env.CXR_WASM_RELAXED_SIMD === '0') {
    setKernelOptions({ gemmVariant: 'muladd' });
    return 'relaxed SIMD off by CXR_WASM_RELAXED_SIMD=0';
  }
  setKernelOptions({ gemmVariant: 'auto' });
  if (gemmVariants().includes('fma')) return 'relaxed SIMD standard in this engine';
  v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  return gemmVariants().includes('fma') ? 'relaxed SIMD on by --experimental-wasm-relaxed-simd' : 'no relaxed SIMD in this engine';
}

/** What the wasm backend runs, for the backend report: SIMD, and which GEMM build serves BatchMatMul and why. */
async function wasmReport(relaxed: string): Promise<string> {
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) ? 'on' : 'off';
  const gemm = wasmGemmVariant();
  return `SIMD ${simd}, matMul on ${gemm ? `the SIMD GEMM, ${gemm === 'fma' ? 'FMA' : 'mul+add'} build` : "tfjs-backend-wasm's kernels"}; ${relaxed}`;
}

async function useWasm(): Promise<string> {
  const relaxed = allowRelaxedSimd();
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // In Node the .wasm files are read from disk next to the package's JS, not fetched.
  const dist = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
  wasm.setWasmPaths(dist);
  if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend failed to initialise');
  registerWasmGradientKernels();
  const pages = adviseHeapHugePages((tf.backend() as { wasm?: { asm?: { memory?: unknown } } }).wasm?.asm?.memory);
  return `${relaxed}; ${pages}`;
}

/**
 * The wasm backend's heap as it stands, or null off wasm. A wasm memory only grows, so after a run
 * this is its high-water mark (allocator fragmentation included), against WASM32_MAX_BYTES.
 */
export function wasmHeapBytes(): number | null {
  if (tf.getBackend() !== 'wasm') return null;
  const memory = (tf.backend() as { wasm?: { asm?: { memory?: { buffer?: ArrayBuffer } } } }).wasm?.asm?.memory;
  return memory?.buffer instanceof ArrayBuffer ? memory.buffer.byteLength : null;
}

let active: BackendInfo | null = null;

/**
 * Select and initialise the compute backend once per process. `auto` prefers CUDA
 * (tfjs-node-gpu with a visible NVIDIA GPU), then WebGPU on a hardware adapter (kernels/webgpu.ts),
 * then native TensorFlow on the CPU (tfjs-node), then WebAssembly (XNNPACK, SIMD), then the
 * pure-JS `cpu` backend. A software WebGPU adapter only with `webgpu-software`.
 */
export async function initBackend(choice: BackendChoice): Promise<BackendInfo> {
  if (active && (choice === 'auto' || choice === active.name)) return active;
  const tried: string[] = [];
  const done = async (name: string, reason: string): Promise<BackendInfo> => {
    if (!(await tf.setBackend(name))) throw new Error(`backend '${name}' failed to initialise`);
    await tf.ready();
    active = { name, reason: tried.length ? `${reason} (${tried.join('; ')})` : reason };
    return active;
  };
  switch (choice) {
    case 'cpu':
      return done('cpu', 'requested with --backend cpu');
    case 'webgpu':
    case 'webgpu-software': {
      const adapter = await useWebGpu(choice === 'webgpu-software').catch((e: unknown) => {
        throw new UserError(`--backend ${choice}: ${errorMessage(e)}`);
      });
      return done('webgpu', `requested with --backend ${choice}: WebGPU on ${adapter}`);
    }
    case 'wasm': {
      const relaxed = await useWasm();
      return done('wasm', `requested with --backend wasm (${await wasmReport(relaxed)})`);
    }
    case 'tensorflow': {
      const gpus = nvidiaGpuCount();
      const err = gpus > 0 ? await tryImport('@tensorflow/tfjs-node-gpu') : 'no NVIDIA GPU visible';
      if (err === null) return done('tensorflow', `requested with --backend tensorflow: tfjs-node-gpu, ${gpus} GPU(s)`);
      const err2 = await tryImport('@tensorflow/tfjs-node');
      if (err2 === null) return done('tensorflow', `requested with --backend tensorflow: tfjs-node on the CPU (tfjs-node-gpu: ${err})`);
      throw new UserError(
        `--backend tensorflow: neither @tensorflow/tfjs-node-gpu (${err}) nor @tensorflow/tfjs-node (${err2}) can be loaded; ` +
          'install one of them (npm install @tensorflow/tfjs-node) or use --backend wasm',
      );
    }
    case 'auto': {
      const gpus = nvidiaGpuCount();
      if (gpus > 0) {
        const err = await tryImport('@tensorflow/tfjs-node-gpu');
        if (err === null) return done('tensorflow', `auto: tfjs-node-gpu with ${gpus} NVIDIA GPU(s)`);
        tried.push(`tfjs-node-gpu: ${err}`);
      } else {
        tried.push('tfjs-node-gpu: no NVIDIA GPU visible');
      }
      const noGpu = noGpuDeviceNode();
      if (noGpu) tried.push(`webgpu: ${noGpu}`);
      else {
        try {
          return done('webgpu', `auto: WebGPU on ${await useWebGpu(false)}`);
        } catch (e) {
          tried.push(`webgpu: ${errorMessage(e).split(/\. Looked for|: it computes/)[0]}`);
        }
      }
      const err = await tryImport('@tensorflow/tfjs-node');
      if (err === null) return done('tensorflow', 'auto: tfjs-node (native TensorFlow on the CPU)');
      tried.push('tfjs-node: not installed');
      try {
        const relaxed = await useWasm();
        return done('wasm', `auto: WebAssembly (${await wasmReport(relaxed)})`);
      } catch (e) {
        tried.push(`wasm: ${errorMessage(e)}`);
      }
      return done('cpu', 'auto: pure-JS cpu backend, the last resort');
    }
    default:
      throw new UserError(`--backend '${String(choice)}' is not one of ${BACKEND_CHOICES.join(', ')}`);
  }
}
