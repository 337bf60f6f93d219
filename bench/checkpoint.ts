import { fork, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { buildLayout } from '../shared/params.js';
import { shardRange } from '../shared/shard.js';
import { crc32 } from '../shared/checkpoint/format.js';
import {
  CheckpointWriter,
  checkpointsDir,
  commitCheckpoint,
  layoutHash,
  loadCheckpoint,
  resolveCheckpoint,
  stepDir,
  type ShardWritten,
} from '../shared/checkpoint/index.js';

/**
 * `npm run bench -- checkpoint [--mb 240] [--worlds 2,4] [--reps 5] [--dir DIR] [--warm]`
 *
 * Save and load throughput of a sharded checkpoint (params + AdamW m + v) written by 2 and 4 rank
 * processes concurrently (each with its CheckpointWriter, as every worker has), next to `dd bs=4M
 * conv=fsync` of the same bytes in the same run; loads (same world and resharded) next to `dd`
 * reading them back. Loads are cold (page cache dropped) when /proc/sys/vm/drop_caches is
 * writable, unless --warm. Also: the training stall per checkpoint (the copy-out in save()), the
 * longest event-loop block on the training thread while the write runs, the CPU time a save
 * costs, and the checksum speeds that chose crc32 per block over sha256.
 */
export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      mb: { type: 'string', default: '240' },
      worlds: { type: 'string', default: '2,4' },
      dir: { type: 'string' },
      warm: { type: 'boolean', default: false },
      reps: { type: 'string', default: '5' },
    },
  });
  const totalBytes = Number(values.mb) * 1e6;
  const n = Math.floor(totalBytes / 12);
  const worlds = values.worlds!.split(',').map(Number);
  const reps = Math.max(1, Number(values.reps));
  const base = mkdtempSync(path.join(values.dir ?? os.tmpdir(), 'cxr-bench-ckpt-'));
  const say = (s: string) => process.stdout.write(s + '\n');
  const MB = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
  const rate = (b: number, s: number) => `${(b / s / 1e6).toFixed(0)} MB/s`;
  const canDrop = !values.warm && dropCaches();
  const cleanup: string[] = [base];
  try {
    say(`checkpoint bench: ${MB(n * 12)} (params + m + v, ${n.toLocaleString('en')} float32 each) in ${base}`);
    say(
      `machine: ${os.cpus().length} cores, load average ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')} (shared with other work: figures are noisy), node ${process.version}`,
    );

    // Checksum speeds on this machine: why the shards carry crc32 per 1 MiB block and no sha256 of the data.
    const probe = new Uint8Array(64 << 20);
    randomFillSync(probe);
    let t = performance.now();
    createHash('sha256').update(probe).digest();
    const shaS = (performance.now() - t) / 1000;
    t = performance.now();
    for (let o = 0; o < probe.length; o += 1 << 20) crc32(probe.subarray(o, o + (1 << 20)));
    const crcS = (performance.now() - t) / 1000;
    say(`checksums: sha256 ${rate(probe.length, shaS)}, crc32 (1 MiB blocks) ${rate(probe.length, crcS)}`);

    const layout = buildLayout([{ name: 'flat', shape: [n], decay: true }]);
    const hash = layoutHash(layout);
    const params = new Float32Array(n);
    const m = new Float32Array(n);
    const v = new Float32Array(n);
    for (const a of [params, m, v]) randomFillSync(new Uint8Array(a.buffer));

    // The reference writes the same bytes (the random params, m, v) from memory, so that a disk
    // that special-cases zeros cannot flatter it; dd of /dev/zero is printed beside it for context.
    const srcDir = existsSync('/dev/shm') ? '/dev/shm' : base;
    const src = path.join(srcDir, `cxr-bench-ckpt-src-${process.pid}.bin`);
    cleanup.push(src);
    writeFileSync(src, Buffer.concat([params, m, v].map((a) => Buffer.from(a.buffer))));
    const ddWrite = (from: string): { s: number; bytes: number } => {
      const count = Math.ceil((n * 12) / (4 << 20));
      const f = path.join(base, 'dd.bin');
      const t0 = performance.now();
      const r = spawnSync('dd', [`if=${from}`, `of=${f}`, 'bs=4M', `count=${count}`, 'conv=fsync'], { encoding: 'utf8' });
      const s = (performance.now() - t0) / 1000;
      if (r.status !== 0) throw new Error(`dd failed: ${r.stderr}`);
      const bytes = statSync(f).size;
      rmSync(f);
      return { s, bytes };
    };
    const ddRead = (files: string[]): { s: number; bytes: number } => {
      if (canDrop) dropCaches();
      let bytes = 0;
      const t0 = performance.now();
      for (const f of files) {
        const r = spawnSync('dd', [`if=${f}`, 'of=/dev/null', 'bs=4M'], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`dd failed: ${r.stderr}`);
        bytes += statSync(f).size;
      }
      return { s: (performance.now() - t0) / 1000, bytes };
    };

    let step = 0;
    for (const world of worlds) {
      // One process per rank, as in training: each holds its slices and its own CheckpointWriter
      // (started before the timed saves, as a trainer keeps its writer for the whole run).
      const ranks = await Promise.all(Array.from({ length: world }, (_, rank) => startRank(src, n, world, rank, hash, base)));

      // The first save copies into fresh memory; later ones into the writer's kept staging buffers.
      // The virtual disk's speed swings run to run, so each save is paired with a dd just before it.
      let dir = '';
      let reports: ShardWritten[] = [];
      let bytes = 0;
      const saveRates: number[] = [];
      const ddRates: number[] = [];
      say('');
      for (let round = 0; round <= reps; round++) {
        if (dir) rmSync(dir, { recursive: true, force: true });
        const ref = ddWrite(src);
        step += 10;
        dir = stepDir(checkpointsDir(base), step);
        const t0 = performance.now();
        const cpu0 = process.cpuUsage();
        const results = await Promise.all(ranks.map((r) => r.save(dir, step)));
        reports = results.map((r) => r.report);
        await commitCheckpoint(dir, { step, epoch: 0, sampler: null, rng: null, config: null, layout, world, shards: reports });
        const saveS = (performance.now() - t0) / 1000;
        const cpu = process.cpuUsage(cpu0);
        const cpuS = (cpu.user + cpu.system) / 1e6 + results.reduce((a, r) => a + r.cpuS, 0);
        bytes = reports.reduce((a, r) => a + r.bytes, 0);
        const ratio = bytes / saveS / (ref.bytes / ref.s);
        if (round > 0) {
          saveRates.push(bytes / saveS);
          ddRates.push(ref.bytes / ref.s);
        }
        say(
          `save ${round === 0 ? '(first, fresh buffers)' : `#${round}`}, ${world} rank processes concurrently, ${MB(bytes)} incl. commit: ` +
            `${saveS.toFixed(2)} s, ${rate(bytes, saveS)}; dd (same bytes from memory) bs=4M conv=fsync just before: ${ref.s.toFixed(2)} s, ` +
            `${rate(ref.bytes, ref.s)}; save/dd = ${(ratio * 100).toFixed(0)}%`,
        );
        say(
          `  training stall (copy-out of one rank's ${MB(bytes / world)} shard): ${Math.max(...results.map((r) => r.stallMs)).toFixed(0)} ms max over ranks; ` +
            `longest event-loop block on a rank while its write ran: ${Math.max(...results.map((r) => r.loopMaxMs)).toFixed(0)} ms; ` +
            `CPU for the whole save (all processes and threads): ${cpuS.toFixed(2)} s`,
        );
      }
      await Promise.all(ranks.map((r) => r.stop()));
      const zero = ddWrite('/dev/zero');
      say(`  for context: dd if=/dev/zero bs=4M conv=fsync, ${MB(zero.bytes)}: ${zero.s.toFixed(2)} s, ${rate(zero.bytes, zero.s)}`);
      const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
      say(
        `SAVE ${world} ranks: median ${rate(med(saveRates), 1)} vs dd median ${rate(med(ddRates), 1)} over ${reps} interleaved pairs = ` +
          `${((med(saveRates) / med(ddRates)) * 100).toFixed(0)}% (goal >= 70%); load average now ${os
            .loadavg()
            .map((x) => x.toFixed(1))
            .join(' ')}`,
      );

      const files = reports.map((r) => r.path);
      const readRef = ddRead(files);
      say(
        `reference: dd of=/dev/null bs=4M of those ${world} files${canDrop ? ' (cold cache)' : ' (warm cache)'}: ${readRef.s.toFixed(2)} s, ${rate(readRef.bytes, readRef.s)}`,
      );
      for (const to of [world, ...worlds.filter((w) => w !== world)]) {
        if (canDrop) dropCaches();
        const l0 = performance.now();
        // Each rank loads full params + its m/v shard; every byte read is verified.
        const parts = await Promise.all(Array.from({ length: to }, (_, rank) => loadCheckpoint(dir, { world: to, rank, layout })));
        const ls = (performance.now() - l0) / 1000;
        const read = n * 4 * to + n * 8; // params once per rank + moments once overall
        say(
          `load ${world} -> ${to} ranks${to !== world ? ' (reshard)' : ''}${canDrop ? ', cold cache' : ', warm cache'}: ${ls.toFixed(2)} s for ` +
            `${MB(read)} delivered (full params to each rank + its moments), ${rate(read, ls)}; ` +
            `checkpoint bytes ${MB(bytes)} / time = ${rate(bytes, ls)} (${((bytes / ls / (readRef.bytes / readRef.s)) * 100).toFixed(0)}% of dd read)`,
        );
        // Exactness spot check on the way: moments concatenate back to the saved vectors.
        const cat = Buffer.concat(parts.map((p) => Buffer.from(p.m.buffer)));
        if (!cat.equals(Buffer.from(m.buffer))) throw new Error(`load ${world} -> ${to}: moments differ from what was saved`);
      }
      // What a restart in place (and --resume RUN) pays before loading: every block of every shard checked.
      if (canDrop) dropCaches();
      const v0 = performance.now();
      await resolveCheckpoint(dir, { layout });
      const vs = (performance.now() - v0) / 1000;
      say(
        `verify (resolveCheckpoint: crc32 of every block, as a restart does)${canDrop ? ', cold cache' : ', warm cache'}: ${vs.toFixed(2)} s, ${rate(bytes, vs)}`,
      );
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    for (const p of cleanup) rmSync(p, { recursive: true, force: true });
  }
}

/** Drop the page cache so loads read from disk; false when this machine does not allow it. */
function dropCaches(): boolean {
  try {
    spawnSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

interface SaveResult {
  report: ShardWritten;
  stallMs: number;
  loopMaxMs: number;
  cpuS: number;
}

/** A rank process (this module run with CXR_BENCH_CKPT_RANK), driven over the IPC channel. */
async function startRank(src: string, n: number, world: number, rank: number, hash: string, base: string) {
  const child = fork(fileURLToPath(import.meta.url), [], {
    env: { ...process.env, CXR_BENCH_CKPT_RANK: JSON.stringify({ src, n, world, rank, hash, base }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const replies: ((m: unknown) => void)[] = [];
  child.on('message', (m) => replies.shift()?.(m));
  const exited = new Promise<void>((res) => child.on('exit', () => res()));
  const ask = <T>(msg: unknown): Promise<T> =>
    new Promise<T>((res, rej) => {
      replies.push((m) => res(m as T));
      void exited.then(() => rej(new Error(`bench rank ${rank} exited`)));
      if (msg !== null) child.send(msg as object);
    });
  await ask<{ ready: true }>(null);
  return {
    save: (dir: string, step: number) => ask<SaveResult>({ cmd: 'save', dir, step }),
    stop: async () => {
      child.send({ cmd: 'exit' });
      await exited;
    },
  };
}

async function rankMain(spec: { src: string; n: number; world: number; rank: number; hash: string; base: string }): Promise<void> {
  const { start, end } = shardRange(spec.n, spec.world, spec.rank);
  const fd = openSync(spec.src, 'r');
  const slice = (k: number) => {
    const a = new Float32Array(end - start);
    readSync(fd, new Uint8Array(a.buffer), 0, a.byteLength, (k * spec.n + start) * 4);
    return a;
  };
  const [params, m, v] = [0, 1, 2].map(slice) as [Float32Array, Float32Array, Float32Array];
  closeSync(fd);
  const writer = new CheckpointWriter();
  const empty = new Float32Array(0);
  const warm = path.join(spec.base, `warm-${spec.rank}`);
  await writer.save(warm, { rank: 0, world: 1, step: 0, layoutHash: spec.hash, start: 0, end: 0, params: empty, m: empty, v: empty });
  rmSync(warm, { recursive: true, force: true });
  process.on('message', async (msg: { cmd: 'save' | 'exit'; dir: string; step: number }) => {
    if (msg.cmd === 'exit') {
      await writer.close();
      process.disconnect();
      return;
    }
    const cpu0 = process.cpuUsage();
    const loop = monitorEventLoopDelay({ resolution: 5 });
    const t0 = performance.now();
    const p = writer.save(msg.dir, { rank: spec.rank, world: spec.world, step: msg.step, layoutHash: spec.hash, start, end, params, m, v });
    const stallMs = performance.now() - t0;
    loop.enable();
    const report = await p;
    loop.disable();
    const cpu = process.cpuUsage(cpu0);
    process.send!({ report, stallMs, loopMaxMs: loop.max / 1e6, cpuS: (cpu.user + cpu.system) / 1e6 } satisfies SaveResult);
  });
  process.send!({ ready: true });
}

if (process.env.CXR_BENCH_CKPT_RANK) await rankMain(JSON.parse(process.env.CXR_BENCH_CKPT_RANK));
