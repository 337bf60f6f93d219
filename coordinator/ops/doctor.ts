import { execFile } from 'node:child_process';
import { promises as fsp, readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../../shared/util/paths.js';
import { shmNative } from '../../native/addon.js';
import { thpPolicy } from '../../kernels/heap-pages.js';

/**
 * `coordinator doctor`: can this machine run the trainer, and with what? Each check reports
 * ok / warn / fail with a one-line detail and, when not ok, a hint saying what to do. The
 * machine is usable when no check fails (warnings, such as "no GPU", are fine on CPU nodes).
 */
export type Status = 'ok' | 'warn' | 'fail';

export interface Check {
  name: string;
  status: Status;
  detail: string;
  hint?: string;
}

export const BACKENDS = [
  { name: 'tensorflow (GPU)', module: '@tensorflow/tfjs-node-gpu', backend: 'tensorflow' },
  { name: 'tensorflow (CPU)', module: '@tensorflow/tfjs-node', backend: 'tensorflow' },
  { name: 'wasm', module: '@tensorflow/tfjs-backend-wasm', backend: 'wasm' },
  { name: 'cpu', module: '@tensorflow/tfjs', backend: 'cpu' },
] as const;

/**
 * Loads a backend in a child process (a native binding that cannot find libcuda must not take
 * the doctor down with it, and two tfjs bindings must not meet in one process), runs one op,
 * prints a JSON result line.
 */
const PROBE = `
const [mod, backend] = process.argv.slice(1);
(async () => {
  try {
    const m = await import(mod);
    const tf = mod === '@tensorflow/tfjs' ? m : await import('@tensorflow/tfjs');
    if (!(await tf.setBackend(backend))) throw new Error('setBackend(' + backend + ') returned false');
    await tf.ready();
    const sum = tf.add(tf.tensor1d([1, 2]), tf.tensor1d([3, 4])).dataSync();
    if (sum[0] !== 4 || sum[1] !== 6) throw new Error('wrong result from a test op: ' + Array.from(sum));
    console.log(JSON.stringify({ ok: true, version: (m.version && (m.version['tfjs-node'] || m.version['tfjs-backend-wasm'] || m.version.tfjs)) || tf.version.tfjs }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, code: e && e.code, error: String(e && e.message || e).split('\\n')[0] }));
  }
})();
`;

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: packageRoot, timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as NodeJS.ErrnoException).code ?? 1) : 0, stdout, stderr });
    });
  });
}

export async function checkBackend(b: (typeof BACKENDS)[number]): Promise<Check> {
  const r = await run(process.execPath, ['--input-type=module', '-e', PROBE, b.module, b.backend], 120_000);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  let res: { ok: boolean; version?: string; code?: string; error?: string };
  try {
    res = JSON.parse(line);
  } catch {
    res = { ok: false, error: `probe crashed (exit ${r.code}): ${r.stderr.trim().split('\n').pop() ?? ''}` };
  }
  const name = `backend ${b.name}`;
  if (res.ok) return { name, status: 'ok', detail: `${b.module} ${res.version ?? ''} loads and computes`.trim() };
  const missing = res.code === 'ERR_MODULE_NOT_FOUND' || /Cannot find (package|module) '@tensorflow\/tfjs-node/.test(res.error ?? '');
  const gpu = b.module.endsWith('-gpu');
  let hint: string;
  if (missing && gpu)
    hint =
      'not installed: on a GPU node, npm install @tensorflow/tfjs-node-gpu (needs CUDA 11.2 and cuDNN 8.1; its install downloads libtensorflow), or use the container image';
  else if (missing)
    hint =
      'not installed: npm install @tensorflow/tfjs-node for the native CPU backend (its install downloads libtensorflow); the wasm backend works without it';
  else if (/libcud|libcublas|libnvinfer|CUDA/i.test(res.error ?? ''))
    hint = 'CUDA libraries not found: install CUDA 11.2 + cuDNN 8.1 matching the driver, or set LD_LIBRARY_PATH to them';
  else if (/libtensorflow|\.node'|bindings/i.test(res.error ?? ''))
    hint = 'the native binding did not load: reinstall it (npm rebuild ' + b.module + ') on this machine';
  else hint = `reinstall with npm ci; the error was: ${res.error}`;
  // Only the portable backends are required; the native ones are optional extras.
  const required = b.backend === 'wasm' || b.backend === 'cpu';
  return { name, status: required ? 'fail' : missing ? 'warn' : 'fail', detail: missing ? 'not installed' : (res.error ?? 'failed'), hint };
}

/**
 * WebGPU in a child process (kernels/webgpu.ts there): the adapter Dawn offers and one op
 * computed on it. A hardware adapter is ok; the software one (llvmpipe) or none is a warning,
 * since WebGPU is optional.
 */
const WEBGPU_PROBE = `
const [entry] = process.argv.slice(1);
(async () => {
  const w = await import(entry + '/webgpu.js');
  const found = await w.findWebGpuAdapter();
  if (found.error) return console.log(JSON.stringify({ ok: false, error: found.error }));
  try {
    const b = await import(entry + '/backend.js');
    await b.initBackend('webgpu-software');
    const tf = await import('@tensorflow/tfjs');
    const sum = await tf.add(tf.tensor1d([1, 2]), tf.tensor1d([3, 4])).data();
    if (sum[0] !== 4 || sum[1] !== 6) throw new Error('wrong result from a test op: ' + Array.from(sum));
    console.log(JSON.stringify({ ok: true, software: found.info.software, adapter: w.describeAdapter(found.info) }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: 'adapter ' + w.describeAdapter(found.info) + ': ' + String(e && e.message || e).split('\\n')[0] }));
  }
})();
`;

export async function checkWebGpu(): Promise<Check> {
  const kernels = pathToFileURL(path.join(packageRoot, 'dist', 'kernels')).href;
  const r = await run(process.execPath, ['--input-type=module', '-e', WEBGPU_PROBE, kernels], 120_000);
  let res: { ok: boolean; software?: boolean; adapter?: string; error?: string };
  try {
    res = JSON.parse(r.stdout.trim().split('\n').pop() ?? '');
  } catch {
    res = { ok: false, error: `probe crashed (exit ${r.code}): ${r.stderr.trim().split('\n').pop() ?? ''}` };
  }
  const name = 'backend webgpu';
  if (res.ok && !res.software) return { name, status: 'ok', detail: `WebGPU computes on ${res.adapter}` };
  if (res.ok)
    return {
      name,
      status: 'warn',
      detail: `only a software adapter: ${res.adapter}`,
      hint: 'correct but slow: --backend webgpu-software runs on it (tests, CI); a GPU needs its driver with a Vulkan ICD (docs/gpu.md)',
    };
  const [detail, hint] = (res.error ?? 'failed').split(/\. (?=Looked for)/);
  return { name, status: 'warn', detail: detail!, hint: hint ?? 'see docs/gpu.md' };
}

export async function checkGpus(): Promise<Check> {
  const r = await run('nvidia-smi', ['--query-gpu=index,name,memory.total,driver_version', '--format=csv,noheader'], 20_000);
  if (r.code === 'ENOENT')
    return {
      name: 'GPUs',
      status: 'warn',
      detail: 'nvidia-smi not found: no NVIDIA driver on this machine',
      hint: 'fine on CPU nodes; on a GPU node install the NVIDIA driver (or use the GPU device plugin in Kubernetes)',
    };
  if (r.code !== 0)
    return {
      name: 'GPUs',
      status: 'warn',
      detail: `nvidia-smi failed: ${(r.stderr || r.stdout).trim().split('\n')[0]}`,
      hint: 'the driver is installed but not working: check `nvidia-smi` by hand (driver/kernel module mismatch after an upgrade needs a reboot)',
    };
  const gpus = r.stdout.trim().split('\n').filter(Boolean);
  if (!gpus.length)
    return {
      name: 'GPUs',
      status: 'warn',
      detail: 'driver present, no GPU visible',
      hint: 'check CUDA_VISIBLE_DEVICES and the container GPU request',
    };
  return { name: 'GPUs', status: 'ok', detail: gpus.map((g) => g.replace(/\s*,\s*/g, ', ')).join('; ') };
}

export async function checkZeromq(): Promise<Check> {
  try {
    const zmq = await import('zeromq');
    const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'node_modules', 'zeromq', 'package.json'), 'utf8')) as { version: string };
    const sock = new zmq.Pair();
    sock.close();
    return { name: 'ZeroMQ', status: 'ok', detail: `zeromq ${pkg.version} (libzmq ${zmq.version})` };
  } catch (e) {
    return {
      name: 'ZeroMQ',
      status: 'fail',
      detail: (e as Error).message.split('\n')[0]!,
      hint: 'the zeromq native module did not load: run npm ci (or npm rebuild zeromq) on this machine',
    };
  }
}

/**
 * The optional native addon (`npm install` builds it): same-host all-reduce through shared
 * buffers, and the wasm heap on transparent huge pages where the kernel's policy allows them.
 * Missing or without huge pages is a warning: training runs, a little slower.
 */
export function checkNativeAddon(addon: { addon: unknown; why: string } = shmNative(), thp: string | null = thpPolicy()): Check {
  const name = 'native addon';
  if (!addon.addon) {
    return {
      name,
      status: 'warn',
      detail: addon.why,
      hint: 'install python3, make and g++, then npm install (or node native/build.mjs): same-host all-reduce then uses shared buffers and the wasm heap huge pages',
    };
  }
  const pages =
    thp === 'madvise' || thp === 'always'
      ? `wasm heap on transparent huge pages (THP ${thp})`
      : thp === 'never'
        ? "wasm heap on 4 KiB pages (THP 'never' on this host)"
        : 'no transparent huge pages on this OS';
  if (thp === 'never')
    return {
      name,
      status: 'warn',
      detail: `built; ${pages}`,
      hint: 'echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (as root, on the host) lets the wasm backend ask for them: a few percent per step',
    };
  return { name, status: 'ok', detail: `built: shared-buffer all-reduce; ${pages}` };
}

export function checkNode(version = process.versions.node): Check {
  const major = Number(version.split('.')[0]);
  if (major >= 20)
    return {
      name: 'Node.js',
      status: 'ok',
      detail: `v${version} (${os.cpus().length} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB memory)`,
    };
  return {
    name: 'Node.js',
    status: 'fail',
    detail: `v${version}`,
    hint: 'Node 20 or newer is required: install it (nvm install 20) or use the container image',
  };
}

/** Free space where runs write; fail below `minFreeGiB`. */
export async function checkDisk(dir: string, minFreeGiB: number): Promise<Check> {
  const name = `disk ${dir}`;
  // The run directory may not exist yet: measure the nearest existing parent.
  let probe = path.resolve(dir);
  while (!(await fsp.stat(probe).catch(() => null))) {
    const up = path.dirname(probe);
    if (up === probe) break;
    probe = up;
  }
  try {
    await fsp.access(probe, (await import('node:fs')).constants.W_OK);
  } catch {
    return {
      name,
      status: 'fail',
      detail: `${probe} is not writable`,
      hint: `choose a writable --run-dir, or fix the permissions of ${probe}`,
    };
  }
  const st = await fsp.statfs(probe);
  const free = (st.bavail * st.bsize) / 2 ** 30;
  const detail = `${free.toFixed(1)} GiB free${probe !== path.resolve(dir) ? ` (on ${probe}; the directory does not exist yet)` : ''}`;
  if (free < minFreeGiB)
    return {
      name,
      status: 'fail',
      detail,
      hint: `checkpoints and metrics need room: free space or point --run-dir at a larger volume (need ${minFreeGiB} GiB, --min-free-gib)`,
    };
  return { name, status: 'ok', detail };
}

export function checkPort(port: number, host = '0.0.0.0'): Promise<Check> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'in use by another process' : e.code === 'EACCES' ? 'permission denied' : e.message;
      const hint =
        e.code === 'EADDRINUSE'
          ? `find the owner with 'ss -ltnp | grep :${port}' and stop it, or choose another port`
          : 'choose a port above 1024';
      resolve({ name: `port ${port}`, status: 'fail', detail: why, hint });
    });
    srv.listen(port, host, () => srv.close(() => resolve({ name: `port ${port}`, status: 'ok', detail: 'free' })));
  });
}

export interface DoctorOptions {
  runDir: string;
  ports: number[];
  minFreeGiB: number;
}

export async function runDoctor(opts: DoctorOptions): Promise<{ checks: Check[]; usable: boolean }> {
  const [node, zmq, gpus, disk, webgpu, ...rest] = await Promise.all([
    Promise.resolve(checkNode()),
    checkZeromq(),
    checkGpus(),
    checkDisk(opts.runDir, opts.minFreeGiB),
    checkWebGpu(),
    ...BACKENDS.map(checkBackend),
    ...opts.ports.map((p) => checkPort(p)),
  ]);
  // Backends in auto's order of preference (the first ok one is the fastest).
  const checks = [
    node,
    rest[0]!,
    webgpu,
    ...rest.slice(1, BACKENDS.length),
    gpus,
    zmq,
    checkNativeAddon(),
    disk,
    ...rest.slice(BACKENDS.length),
  ];
  const backends = checks.filter((c) => c.name.startsWith('backend '));
  // A GPU without the GPU backend (or the reverse) is worth a warning: the run would be slow.
  if (gpus.status === 'ok' && backends[0]!.status !== 'ok' && webgpu.status !== 'ok') {
    checks.push({
      name: 'GPU use',
      status: 'warn',
      detail: 'GPUs are present but neither the tensorflow GPU backend nor WebGPU on a hardware adapter loads',
      hint: backends[0]!.hint ?? '',
    });
  }
  const usable = checks.every((c) => c.status !== 'fail') && backends.some((c) => c.status === 'ok');
  return { checks, usable };
}

export function formatChecks(checks: readonly Check[], usable: boolean, color: boolean): string {
  const mark = (s: Status) => {
    const text = s === 'ok' ? 'ok  ' : s === 'warn' ? 'warn' : 'FAIL';
    if (!color) return text;
    return s === 'ok' ? `\x1b[32m${text}\x1b[0m` : s === 'warn' ? `\x1b[33m${text}\x1b[0m` : `\x1b[31m${text}\x1b[0m`;
  };
  const width = Math.max(...checks.map((c) => c.name.length));
  const lines = checks.map(
    (c) => `${mark(c.status)}  ${c.name.padEnd(width)}  ${c.detail}${c.hint ? `\n${' '.repeat(width + 8)}hint: ${c.hint}` : ''}`,
  );
  const best = checks.find((c) => c.name.startsWith('backend ') && c.status === 'ok');
  lines.push('');
  lines.push(
    usable
      ? `usable: yes${best ? ` (fastest working backend: ${best.name.replace('backend ', '')})` : ''}`
      : 'usable: no (fix the FAIL lines above)',
  );
  return lines.join('\n') + '\n';
}
