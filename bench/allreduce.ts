/**
 * `npm run bench -- allreduce [--worlds 2,4] [--mib 1,64] [--iters 10] [--json] [--no-reference]
 *   [--shm both|on|off] [--transport tcp|ipc] [--chunk-kib 1024] [--shm-chunk-kib 4096]
 *   [--wire fp32|fp16|bf16] [--io-threads N] [--sockbuf-kib 256|0] [--malloc-defaults]`
 *
 * Our ZeroMQ ring all-reduce on real processes, reported as nccl-tests do (algbw = bytes/time,
 * busbw = algbw * 2(n-1)/n), next to the references measured in the same run: PyTorch gloo over
 * loopback (`glooScript`, skipped with the reason when it is not there) and iperf3's loopback TCP rate. Plus the 1 KiB
 * latency of both. By default ours runs twice: with the same-host shared-memory data path (what
 * ranks on one host use) and with every byte on the socket (what ranks on different hosts use).
 * `--json` prints the first of those as a JSON array with the keys of the gloo script.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { teamSharedDir } from '../shared/util/paths.js';
import { freePorts } from '../shared/util/free-ports.js';
import { endpointsFor } from '../test/fixtures/collective-cluster.js';
import { UserError } from '../shared/util/errors.js';
import type { BenchRankJob } from './allreduce-rank.js';
import { COLLECTIVES_ENV } from '../shared/config/worker-env.js';
import { DEFAULT_SOCKET_BUFFER_BYTES, type DataPath, type Wire } from '../worker/collectives/index.js';

interface Row {
  path: DataPathName;
  world: number;
  bytes: number;
  median_s: number;
  algbw_GBps: number;
  busbw_GBps: number;
}

const LATENCY_BYTES = 1024;
const rankScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'allreduce-rank.js');
const glooScript = path.join(teamSharedDir, 'bench', 'gloo_allreduce.py');
const python = '/usr/bin/python3';

function option(argv: string[], name: string, fallback: string): string {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = argv[i + 1];
  if (v === undefined || v.startsWith('--')) throw new UserError(`allreduce bench: --${name} needs a value`);
  return v;
}

function numbers(s: string, name: string): number[] {
  const xs = s.split(',').map(Number);
  if (xs.some((x) => !Number.isFinite(x) || x <= 0))
    throw new UserError(`allreduce bench: --${name} must be a comma-separated list of positive numbers, got '${s}'`);
  return xs;
}

type DataPathName = 'shared-memory' | 'socket';

function row(path: DataPathName, world: number, bytes: number, median: number): Row {
  const algbw = bytes / median / 1e9;
  return { path, world, bytes, median_s: median, algbw_GBps: algbw, busbw_GBps: (algbw * 2 * (world - 1)) / world };
}

/** Runs one world size in fresh processes; rank 0 reports each case. */
async function ours(
  world: number,
  cases: { bytes: number; iters: number }[],
  o: {
    transport: string;
    chunkBytes: number;
    sharedMemory: boolean;
    shmChunkBytes?: number;
    wire: Wire;
    ioThreads?: number;
    socketBufferBytes?: number;
    mallocDefaults: boolean;
  },
): Promise<{ medians: Map<number, number>; dataPath: DataPath | null }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-bench-ar-'));
  try {
    const endpoints = await endpointsFor(world, o.transport as 'ipc' | 'tcp', dir);
    const results = new Map<number, number>();
    let dataPath: DataPath | null = null;
    await Promise.all(
      Array.from({ length: world }, (_, rank) => {
        const job: BenchRankJob = {
          rank,
          world,
          endpoints,
          chunkBytes: o.chunkBytes,
          sharedMemory: o.sharedMemory,
          wire: o.wire,
          cases,
          ...(o.shmChunkBytes ? { shmChunkBytes: o.shmChunkBytes } : {}),
          ...(o.ioThreads ? { ioThreads: o.ioThreads } : {}),
          ...(o.socketBufferBytes !== undefined ? { socketBufferBytes: o.socketBufferBytes } : {}),
        };
        const env = o.mallocDefaults ? process.env : { ...process.env, ...COLLECTIVES_ENV };
        const child = spawn(process.execPath, [rankScript, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'inherit'], env });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        return new Promise<void>((resolve, reject) =>
          child.once('exit', (code) => {
            if (code !== 0) return reject(new Error(`allreduce bench: rank ${rank} of ${world} exited with ${code}`));
            for (const line of out.split('\n').filter(Boolean)) {
              const r = JSON.parse(line) as { bytes: number; median_s: number } | { dataPath: DataPath };
              if ('dataPath' in r) dataPath = r.dataPath;
              else results.set(r.bytes, r.median_s);
            }
            resolve();
          }),
        );
      }),
    );
    return { medians: results, dataPath };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The gloo reference, or the reason it could not run. */
async function gloo(worlds: number[], mibs: number[], iters: number): Promise<Row[] | string> {
  if (!existsSync(glooScript)) return `gloo reference script not found at ${glooScript}`;
  if (!existsSync(python)) return `${python} not found (apt-get install -y python3-torch)`;
  const port = (await freePorts(1))[0]!;
  // Debian's torch wheel misbehaves with the OpenBLAS tuning variables some images set.
  const r = spawnSync(
    'env',
    [
      '-u',
      'OPENBLAS_CORETYPE',
      '-u',
      'OPENBLAS_L2_SIZE',
      python,
      glooScript,
      '--worlds',
      worlds.join(','),
      '--mib',
      mibs.join(','),
      '--iters',
      String(iters),
      '--port',
      String(port),
      '--json',
    ],
    { encoding: 'utf8', timeout: 900_000 },
  );
  if (r.status !== 0)
    return `gloo reference failed (exit ${r.status}): ${(r.stderr || r.error?.message || '').trim().split('\n').slice(-3).join(' | ')} (apt-get install -y python3-torch)`;
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Row[];
  } catch {
    return `gloo reference printed no JSON: ${line.slice(0, 200)}`;
  }
}

/** iperf3 loopback TCP in GB/s, or the reason it could not run. */
async function iperf3(): Promise<number | string> {
  const which = spawnSync('sh', ['-c', 'command -v iperf3'], { encoding: 'utf8' });
  if (which.status !== 0) return 'iperf3 not installed (apt-get install -y iperf3)';
  const port = (await freePorts(1))[0]!;
  const server = spawn('iperf3', ['-s', '-1', '-p', String(port)], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 500));
    const c = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', '3', '-J'], { encoding: 'utf8', timeout: 30_000 });
    if (c.status !== 0) return `iperf3 failed: ${(c.stderr || c.stdout).slice(0, 200)}`;
    const j = JSON.parse(c.stdout) as { end: { sum_received: { bits_per_second: number } } };
    return j.end.sum_received.bits_per_second / 8 / 1e9;
  } finally {
    server.kill();
  }
}

const fmt = (x: number, d = 3): string => x.toFixed(d);
const size = (b: number): string => (b >= 1 << 20 ? `${b / (1 << 20)} MiB` : `${b / 1024} KiB`);

export async function run(argv: string[]): Promise<void> {
  const worlds = numbers(option(argv, 'worlds', '2,4'), 'worlds');
  const mibs = numbers(option(argv, 'mib', '1,64'), 'mib');
  const iters = Number(option(argv, 'iters', '10'));
  const transport = option(argv, 'transport', 'tcp');
  const chunkBytes = Math.round(Number(option(argv, 'chunk-kib', '1024')) * 1024);
  const shmChunkOpt = option(argv, 'shm-chunk-kib', '');
  const shmChunkBytes = shmChunkOpt === '' ? undefined : Math.round(Number(shmChunkOpt) * 1024);
  const shm = option(argv, 'shm', 'both');
  if (!['both', 'on', 'off'].includes(shm)) throw new UserError(`allreduce bench: --shm must be both, on or off, got '${shm}'`);
  const paths: DataPathName[] = shm === 'both' ? ['shared-memory', 'socket'] : shm === 'on' ? ['shared-memory'] : ['socket'];
  const wire = option(argv, 'wire', 'fp32') as Wire;
  const ioThreads = Number(option(argv, 'io-threads', '0')) || undefined;
  const sockbufOpt = option(argv, 'sockbuf-kib', '');
  const socketBufferBytes = sockbufOpt === '' ? undefined : Math.round(Number(sockbufOpt) * 1024);
  if (socketBufferBytes !== undefined && !(socketBufferBytes >= 0))
    throw new UserError(`allreduce bench: --sockbuf-kib must be a number >= 0 (0: the OS's autotuning), got '${sockbufOpt}'`);
  const json = argv.includes('--json');
  const reference = !argv.includes('--no-reference');
  // Ranks run with COLLECTIVES_ENV (glibc malloc tuning), as workers should; this flag measures without.
  const mallocDefaults = argv.includes('--malloc-defaults');
  if (!['tcp', 'ipc'].includes(transport)) throw new UserError(`allreduce bench: --transport must be tcp or ipc, got '${transport}'`);
  if (!['fp32', 'fp16', 'bf16'].includes(wire)) throw new UserError(`allreduce bench: --wire must be fp32, fp16 or bf16, got '${wire}'`);
  if (worlds.some((w) => !Number.isInteger(w) || w < 2)) throw new UserError('allreduce bench: --worlds must be integers >= 2');
  const latIters = Math.max(iters, 200);
  const log = (s: string): void => void (json ? process.stderr : process.stdout).write(s + '\n');

  log(
    `allreduce: ZeroMQ ring over ${transport}, chunk ${chunkBytes / 1024} KiB, socket buffers ${socketBufferBytes === undefined ? `${DEFAULT_SOCKET_BUFFER_BYTES / 1024} KiB` : socketBufferBytes === 0 ? 'OS autotuning' : `${socketBufferBytes / 1024} KiB`}, wire ${wire}, ${mallocDefaults ? 'glibc malloc defaults' : 'COLLECTIVES_ENV'}, ${iters} iterations (1 KiB latency: ${latIters}); load average ${(
      await import('node:os')
    )
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  const rows: Row[] = [];
  const latency: { path: DataPathName; world: number; s: number }[] = [];
  for (const p of paths)
    for (const world of worlds) {
      const cases = [
        ...mibs.map((m) => ({ bytes: Math.floor((m * 1024 * 1024) / 4) * 4, iters })),
        { bytes: LATENCY_BYTES, iters: latIters },
      ];
      const res = await ours(world, cases, {
        transport,
        chunkBytes,
        sharedMemory: p === 'shared-memory',
        wire,
        mallocDefaults,
        ...(shmChunkBytes ? { shmChunkBytes } : {}),
        ...(ioThreads ? { ioThreads } : {}),
        ...(socketBufferBytes !== undefined ? { socketBufferBytes } : {}),
      });
      const dp = res.dataPath;
      // Asked for shared memory but not given it (no /dev/shm, not a tmpfs): say so, never mislabel.
      if (p === 'shared-memory' && (dp?.send !== 'shared-memory' || dp.receive !== 'shared-memory'))
        throw new UserError(
          `allreduce bench: the ranks did not use shared memory: ${dp?.note ?? 'rank 0 reported no data path'} (run with --shm off)`,
        );
      log(`world=${world} ${p}: ring chunk ${(dp?.chunkBytes ?? chunkBytes) / 1024} KiB, all-reduce ${dp?.allReduce ?? 'ring'}`);
      for (const c of cases.slice(0, -1)) rows.push(row(p, world, c.bytes, res.medians.get(c.bytes)!));
      latency.push({ path: p, world, s: res.medians.get(LATENCY_BYTES)! });
    }

  let glooRows: Row[] | string = 'skipped (--no-reference)';
  let glooLat: Row[] | string = glooRows;
  let tcp: number | string = glooRows;
  if (reference) {
    glooRows = await gloo(worlds, mibs, iters);
    glooLat = await gloo(worlds, [LATENCY_BYTES / (1024 * 1024)], latIters);
    tcp = await iperf3();
  }
  const findGloo = (w: number, b: number): Row | undefined =>
    typeof glooRows === 'string' ? undefined : glooRows.find((r) => r.world === w && r.bytes === b);

  for (const r of rows) {
    const g = findGloo(r.world, r.bytes);
    const ref = g
      ? `   gloo: busbw ${fmt(g.busbw_GBps)} GB/s (median ${fmt(g.median_s * 1e3, 2)} ms)   ours/gloo ${fmt(r.busbw_GBps / g.busbw_GBps, 2)}x`
      : '';
    log(
      `world=${r.world} size=${size(r.bytes)} ${r.path.padEnd(13)}  ours: median ${fmt(r.median_s * 1e3, 2)} ms  algbw ${fmt(r.algbw_GBps)} GB/s  busbw ${fmt(r.busbw_GBps)} GB/s${ref}`,
    );
  }
  for (const { path: p, world: w, s: t } of latency) {
    const g = typeof glooLat === 'string' ? undefined : glooLat.find((r) => r.world === w);
    log(
      `world=${w} latency 1 KiB ${p.padEnd(13)}  ours: ${fmt(t * 1e6, 1)} us${g ? `   gloo: ${fmt(g.median_s * 1e6, 1)} us   ours/gloo ${fmt(t / g.median_s, 2)}x` : ''}`,
    );
  }
  if (typeof glooRows === 'string') log(`gloo reference: ${glooRows}`);
  if (typeof tcp === 'string') log(`iperf3 reference: ${tcp}`);
  else {
    log(`iperf3 loopback TCP: ${fmt(tcp)} GB/s`);
    for (const r of rows.filter((x) => x.world === 2))
      log(`world=2 size=${size(r.bytes)} ${r.path.padEnd(13)}  ours busbw / iperf3 = ${fmt((100 * r.busbw_GBps) / tcp, 1)}%`);
  }
  // The issue's goals, judged on each path measured (64 MiB, 2 and 4 ranks, as it names them).
  const verdict = (ok: boolean): string => (ok ? 'met' : 'not met');
  for (const p of paths) {
    for (const w of [2, 4]) {
      const r = rows.find((x) => x.path === p && x.world === w && x.bytes === 64 << 20);
      const g = r && findGloo(w, r.bytes);
      if (r && g)
        log(
          `goal (${p}): busbw >= 1.5x gloo's at ${w} ranks, 64 MiB: ${fmt(r.busbw_GBps / g.busbw_GBps, 2)}x (${verdict(r.busbw_GBps >= 1.5 * g.busbw_GBps)})`,
        );
    }
    const r2 = rows.find((x) => x.path === p && x.world === 2 && x.bytes === 64 << 20);
    if (r2 && typeof tcp === 'number')
      log(
        `goal (${p}): busbw >= 70% of iperf3's at 2 ranks, 64 MiB: ${fmt((100 * r2.busbw_GBps) / tcp, 1)}% (${verdict(r2.busbw_GBps >= 0.7 * tcp)})`,
      );
    const l2 = latency.find((x) => x.path === p && x.world === 2);
    const g2 = typeof glooLat === 'string' ? undefined : glooLat.find((x) => x.world === 2);
    if (l2 && g2)
      log(`goal (${p}): 1 KiB latency no worse than gloo's at 2 ranks: ${fmt(l2.s / g2.median_s, 2)}x (${verdict(l2.s <= g2.median_s)})`);
  }
  if (json) process.stdout.write(JSON.stringify(rows.filter((r) => r.path === paths[0]).map(({ path: _, ...r }) => r)) + '\n');
}
