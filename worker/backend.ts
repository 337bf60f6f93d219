import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { UserError, errorMessage } from '../shared/errors.js';
import { registerWasmGradientKernels } from './wasm-kernels.js';

export type BackendChoice = 'auto' | 'tensorflow' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'wasm', 'cpu'];

export interface BackendInfo {
  /** The tfjs backend name now active ('tensorflow', 'wasm', 'cpu'). */
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

async function useWasm(): Promise<void> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // In Node the .wasm files are read from disk next to the package's JS, not fetched.
  const dist = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
  wasm.setWasmPaths(dist);
  if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend failed to initialise');
  registerWasmGradientKernels();
}

let active: BackendInfo | null = null;

/**
 * Select and initialise the compute backend once per process. `auto` prefers CUDA
 * (tfjs-node-gpu with a visible NVIDIA GPU), then native TensorFlow on the CPU (tfjs-node),
 * then WebAssembly (XNNPACK, SIMD), then the pure-JS `cpu` backend.
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
    case 'wasm':
      await useWasm();
      return done('wasm', `requested with --backend wasm (SIMD ${await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT') ? 'on' : 'off'})`);
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
      const err = await tryImport('@tensorflow/tfjs-node');
      if (err === null) return done('tensorflow', 'auto: tfjs-node (native TensorFlow on the CPU)');
      tried.push('tfjs-node: not installed');
      try {
        await useWasm();
        return done('wasm', `auto: WebAssembly (SIMD ${await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT') ? 'on' : 'off'})`);
      } catch (e) {
        tried.push(`wasm: ${errorMessage(e)}`);
      }
      return done('cpu', 'auto: pure-JS cpu backend, the last resort');
    }
    default:
      throw new UserError(`--backend '${String(choice)}' is not one of ${BACKEND_CHOICES.join(', ')}`);
  }
}
