import { existsSync, readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { UserError, errorMessage } from '../shared/util/errors.js';

/**
 * WebGPU through Dawn (the `webgpu` npm package, prebuilt, no download at install) for
 * @tensorflow/tfjs-backend-webgpu. On Linux Dawn runs on Vulkan: the GPU driver's Vulkan ICD on a
 * GPU node, Mesa's llvmpipe (software, slow) on a CPU machine. docs/gpu.md has the set-up.
 */

/** What Dawn says about an adapter (GPUAdapterInfo), plus whether it is a software rasteriser. */
export interface WebGpuAdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** llvmpipe / lavapipe / SwiftShader: correct, slow; used only when asked for by name. */
  software: boolean;
}

interface GpuAdapterLike {
  readonly info: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
}
interface GpuLike {
  requestAdapter(options?: { powerPreference?: string }): Promise<GpuAdapterLike | null>;
}

// Loaded by name at run time (like the optional tfjs-node packages): a checkout whose node_modules
// predates them still builds and runs every other backend, and reports WebGPU as missing.
const DAWN_PACKAGE: string = 'webgpu';
const TFJS_WEBGPU_PACKAGE: string = '@tensorflow/tfjs-backend-webgpu';

/** The environment variable the launcher sets with `--gpu`: the index of the GPU this worker drives. */
export const WEBGPU_DEVICE_ENV = 'CXR_WEBGPU_DEVICE';

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|softpipe/i;

export function adapterInfo(a: GpuAdapterLike): WebGpuAdapterInfo {
  const i = a.info;
  const out = {
    vendor: i.vendor ?? '',
    architecture: i.architecture ?? '',
    device: i.device ?? '',
    description: i.description ?? '',
  };
  const software = i.isFallbackAdapter === true || out.architecture === 'software' || SOFTWARE.test(`${out.device} ${out.description}`);
  return { ...out, software };
}

/** One line for the start-up report: vendor, device, driver (description) and architecture. */
export function describeAdapter(a: WebGpuAdapterInfo): string {
  const parts = [a.description || a.device || 'unnamed device', a.architecture && `architecture ${a.architecture}`].filter(Boolean);
  return `${a.vendor || 'unknown vendor'} ${a.device || ''}`.trim() + ` (${parts.join('; ')})${a.software ? ', a software adapter' : ''}`;
}

/**
 * PCI addresses (DDDD:BB:DD.F) of the machine's display controllers (PCI class 0x03), sorted: the
 * order nvidia-smi numbers NVIDIA GPUs in, which `--gpu` worker i uses to find GPU i.
 */
export function gpuPciAddresses(root = '/sys/bus/pci/devices'): string[] {
  try {
    return readdirSync(root)
      .filter((d) => {
        try {
          return readFileSync(path.join(root, d, 'class'), 'utf8')
            .trim()
            .startsWith('0x03');
        } catch {
          return false;
        }
      })
      .sort();
  } catch {
    return [];
  }
}

/**
 * Dawn takes the first Vulkan device it enumerates and can only filter by name, which is the same
 * on every GPU of a multi-GPU node. Mesa's device-select layer (an implicit Vulkan layer installed
 * with mesa-vulkan-drivers, in front of every ICD including NVIDIA's) puts the device named by
 * DRI_PRIME=pci-DDDD_BB_DD_F first and, with MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE=1, shows
 * only that one. CUDA_VISIBLE_DEVICES does not reach Vulkan drivers. Set before Dawn's Vulkan
 * instance exists (the layer reads them there). Returns what it did, for the report.
 */
export function selectVulkanDevice(env: NodeJS.ProcessEnv = process.env, pciRoot?: string): string | null {
  const raw = env[WEBGPU_DEVICE_ENV];
  if (raw === undefined || raw === '') return null;
  const index = Number(raw);
  if (!Number.isInteger(index) || index < 0) throw new UserError(`${WEBGPU_DEVICE_ENV}='${raw}' is not a GPU index (0, 1, ...)`);
  const gpus = gpuPciAddresses(pciRoot);
  const pci = gpus[index];
  if (!pci)
    throw new UserError(
      `${WEBGPU_DEVICE_ENV}=${index}, but this machine has ${gpus.length} PCI display device(s); start fewer workers or drop --gpu`,
    );
  env.DRI_PRIME = `pci-${pci.replace(/[:.]/g, '_')}`;
  env.MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE = '1';
  return `GPU ${index} of ${gpus.length} at PCI ${pci} by Mesa's device-select layer (DRI_PRIME=${env.DRI_PRIME})`;
}

/**
 * Why there can be no hardware adapter here, or null where a GPU's device node exists (a DRM
 * render node, or NVIDIA's control node, which containers get without /dev/dri). `auto` asks Dawn
 * only where one exists: elsewhere Dawn would find at best a software adapter, which auto never
 * takes, after printing its start-up warnings into every worker's log.
 */
export function noGpuDeviceNode(dev = '/dev'): string | null {
  if (existsSync(path.join(dev, 'nvidiactl'))) return null;
  try {
    if (readdirSync(path.join(dev, 'dri')).some((f) => f.startsWith('renderD'))) return null;
  } catch {
    // no /dev/dri
  }
  return `no GPU device node (${dev}/dri/renderD*, ${dev}/nvidiactl)`;
}

const ICD_DIRS = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d'];
const LIB_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/lib/x86_64-linux-gnu', '/lib64'];

/** What Dawn's Vulkan backend looks for, as found on this machine: the loader, the ICD manifests, the override variables. */
export function vulkanSearch(env: NodeJS.ProcessEnv = process.env): { loader: string | null; icds: string[]; overrides: string[] } {
  const libDirs = [...(env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), ...LIB_DIRS];
  const loader = libDirs.map((d) => path.join(d, 'libvulkan.so.1')).find((f) => existsSync(f)) ?? null;
  const icds = ICD_DIRS.flatMap((d) => {
    try {
      return readdirSync(d)
        .filter((f) => f.endsWith('.json'))
        .map((f) => path.join(d, f));
    } catch {
      return [];
    }
  });
  const overrides = ['VK_DRIVER_FILES', 'VK_ICD_FILENAMES', 'VK_ADD_DRIVER_FILES'].filter((k) => env[k]).map((k) => `${k}=${env[k]}`);
  return { loader, icds, overrides };
}

/** The one-line error for "no adapter": what was looked for, what was found, and the fix. */
export function noAdapterMessage(why: string, env: NodeJS.ProcessEnv = process.env): string {
  const s = vulkanSearch(env);
  return (
    `no WebGPU adapter (${why}). Looked for the Vulkan loader libvulkan.so.1 (${s.loader ?? 'not found'}), ` +
    `Vulkan ICD files in ${ICD_DIRS.slice(0, 2).join(' and ')} (${s.icds.length ? s.icds.map((f) => path.basename(f)).join(', ') : 'none'}), ` +
    `VK_DRIVER_FILES / VK_ICD_FILENAMES (${s.overrides.length ? s.overrides.join(', ') : 'unset'}). ` +
    'Fix: on a GPU node install the driver with its Vulkan ICD and libvulkan1 (in a container NVIDIA_DRIVER_CAPABILITIES must include graphics); ' +
    'for the software adapter on Debian bookworm: apt-get install -t bookworm-backports mesa-vulkan-drivers (docs/gpu.md), then --backend webgpu-software'
  );
}

let gpu: GpuLike | null = null;
let chosen: { adapter: GpuAdapterLike; info: WebGpuAdapterInfo; selection: string | null } | null = null;

/**
 * Loads Dawn and asks it for its adapter (high-performance first, as tfjs-backend-webgpu asks).
 * Answers the adapter or why there is none; the process keeps the first answer.
 */
export async function findWebGpuAdapter(): Promise<{ info: WebGpuAdapterInfo; selection: string | null } | { error: string }> {
  if (chosen) return chosen;
  const selection = selectVulkanDevice();
  if (!gpu) {
    try {
      const dawn = (await import(DAWN_PACKAGE)) as { create(flags: string[]): GpuLike; globals: object };
      // GPUBufferUsage, GPUMapMode etc., which tfjs-backend-webgpu reads as globals.
      Object.assign(globalThis, dawn.globals);
      gpu = dawn.create([]);
    } catch (e) {
      return { error: noAdapterMessage(`Dawn (the webgpu package) did not load: ${errorMessage(e).split('\n')[0]}`) };
    }
  }
  let adapter: GpuAdapterLike | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (e) {
    return { error: noAdapterMessage(`Dawn: ${errorMessage(e).split('\n')[0]}`) };
  }
  if (!adapter) return { error: noAdapterMessage('Dawn found no Vulkan device') };
  chosen = { adapter, info: adapterInfo(adapter), selection };
  return chosen;
}

/**
 * Makes the adapter found above the one tfjs-backend-webgpu gets (its factory calls
 * navigator.gpu.requestAdapter, and registers itself at import only where navigator.gpu exists),
 * then loads it. The caller then sets the backend.
 */
export async function registerWebGpuBackend(): Promise<void> {
  if (!chosen) throw new Error('registerWebGpuBackend: no adapter was found first');
  const adapter = chosen.adapter;
  const nav = ((globalThis as { navigator?: object }).navigator ??= {}) as Record<string, unknown>;
  Object.defineProperty(nav, 'gpu', {
    value: { requestAdapter: async () => adapter, getPreferredCanvasFormat: () => 'bgra8unorm' },
    configurable: true,
  });
  await import(TFJS_WEBGPU_PACKAGE);
}

/**
 * For initBackend: registers tfjs-backend-webgpu on Dawn's adapter and answers the report line,
 * or throws the reason there is none. A software adapter is taken only with `allowSoftware`
 * (`--backend webgpu-software`): it computes correctly but far slower than wasm.
 */
export async function useWebGpu(allowSoftware: boolean): Promise<string> {
  const found = await findWebGpuAdapter();
  if ('error' in found) throw new UserError(found.error);
  if (found.info.software && !allowSoftware)
    throw new UserError(
      `the only WebGPU adapter is ${describeAdapter(found.info)}: it computes correctly but slowly; ` +
        'use --backend webgpu-software to run on it anyway (tests, CI), or install the GPU driver with its Vulkan ICD (docs/gpu.md)',
    );
  await registerWebGpuBackend();
  return `${describeAdapter(found.info)}${found.selection ? `; ${found.selection}` : ''}`;
}
