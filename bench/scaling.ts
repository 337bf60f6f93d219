import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir, cpus } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runSynth } from '../coordinator/data/synth-run.js';
import { parseTrainConfig } from '../model/train-config.js';
import { trainDistributed } from '../coordinator/train/train-job.js';
import { createLogger } from '../shared/util/log.js';
import { COLLECTIVES_ENV } from '../shared/config/worker-env.js';
import type { ProbeJob } from './scaling-probe.js';
import { benchTrainArgs } from './train-args.js';

const probeScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'scaling-probe.js');

/** Runs scaling-probe.ts jobs as concurrent child processes; resolves with each one's median step, ms. */
async function probe(jobs: ProbeJob[]): Promise<number[]> {
  return Promise.all(
    jobs.map(
      (job) =>
        new Promise<number>((resolve, reject) => {
          const child = spawn(process.execPath, [probeScript, JSON.stringify(job)], {
            env: { ...process.env, ...COLLECTIVES_ENV },
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let out = '';
          let err = '';
          child.stdout.on('data', (d: Buffer) => (out += d.toString()));
          child.stderr.on('data', (d: Buffer) => (err += d.toString()));
          child.once('exit', (code) => {
            const line = out.split('\n').find((l) => l.startsWith('{'));
            if (code === 0 && line) resolve((JSON.parse(line) as { stepMs: number }).stepMs);
            else reject(new Error(`scaling probe (${job.mode}) exited with ${code}: ${err.slice(-2000)}`));
          });
        }),
    ),
  );
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** One training run's figures, read from its metrics.jsonl after the warm-up. */
interface RunFigures {
  ips: number;
  stepMs: number;
  comm: number;
  dataWait: number;
  compute: number;
}

/**
 * `npm run bench -- scaling [--per-worker 16] [--steps 60] [--warmup 20] [--rounds 3] [--image-size 64] [--workers 1,2,4]`:
 * data-parallel throughput of the tiny model at a fixed per-worker batch (weak scaling), 1 worker
 * being the reference measured in the same run. Per world size: images/s over the steps after
 * the warm-up, speedup over 1 worker, and the share of step time in communication (embedding
 * all-gather + gradient reduce-scatter, norm all-reduce and parameter all-gather) and in data wait
 * (the slowest rank's per step, as metrics.jsonl records them). `--w-con 0` turns the contrastive
 * loss off: no embedding all-gather (docs/performance.md "Scaling"). With 2 workers it also prints
 * two references measured in the same run (bench/scaling-probe.ts): the throughput two processes
 * doing only the step's compute get from the machine, relative to one, and the cost of a 2-worker
 * step's collectives when neither rank waits for the other.
 *
 * The machine's speed drifts by tens of percent from one minute to the next (a shared host), so
 * one run per world size compares two different machines. The runs are repeated in `--rounds`
 * rounds, the world sizes in alternating order (1,2,4 then 4,2,1: a drift within a round favours
 * neither side), each round's speedups are computed within the round, and the verdict is the
 * median over the rounds, with every round printed.
 * The default image size is 64 px, the size the tiny model trains at in this project (the demo,
 * the acceptance runs, the NIH subset, the step benchmark); at 32 px (used before) a step is about
 * 4 times shorter and the per-step costs that do not shrink with it (the waits between ranks, the
 * collectives, the reports) weigh 4 times more (docs/performance.md, "Scaling").
 * The warm-up is 20 steps because V8 keeps optimising tfjs's JavaScript on its helper threads for
 * a few dozen steps, which costs the 2-worker run (no idle core) more than the 1-worker one, and
 * runs a wasm function in its baseline tier until it has run for a while.
 */
export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'per-worker': { type: 'string', default: '16' },
      steps: { type: 'string', default: '60' },
      warmup: { type: 'string', default: '20' },
      rounds: { type: 'string', default: '3' },
      'image-size': { type: 'string', default: '64' },
      workers: { type: 'string', default: '1,2,4' },
      backend: { type: 'string', default: 'wasm' },
      'w-con': { type: 'string', default: '0.5' },
    },
  });
  const b = Number(values['per-worker']);
  const steps = Number(values.steps);
  const warmup = Number(values.warmup);
  const rounds = Number(values.rounds);
  const size = Number(values['image-size']);
  const worlds = values.workers!.split(',').map(Number);
  if (!(Number.isInteger(rounds) && rounds >= 1) || !(steps > warmup + 1))
    throw new Error('scaling: need --rounds >= 1 and --steps > --warmup + 1');
  const log = createLogger('bench', 'warn');
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-bench-scaling-'));
  const line = (s: string) => process.stdout.write(s + '\n');
  try {
    const data = path.join(dir, 'data');
    const maxWorld = Math.max(...worlds);
    await runSynth(data, false, {
      count: Math.max(600, b * maxWorld * (steps + 2) + 50),
      imageSize: size,
      seed: 1,
      fractions: { val: 0.02, test: 0.02 },
    });
    line(
      `scaling: tiny model, ${size}px, per-worker batch ${b}, ${steps} steps (first ${warmup} not timed), ${rounds} round(s), backend ${values.backend}, contrastive weight ${values['w-con']}; ${cpus().length} cores, load average ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')} at start`,
    );

    const train = async (w: number): Promise<RunFigures> => {
      const out = path.join(dir, `w${w}`);
      await rm(out, { recursive: true, force: true });
      const args = benchTrainArgs({
        workers: w,
        data,
        out,
        steps,
        'batch-size': b * w,
        backend: values.backend,
        'w-con': Number(values['w-con']),
      } as Parameters<typeof benchTrainArgs>[0]);
      await trainDistributed(parseTrainConfig(args), { log, progress: false, workerOutput: () => {} });
      const recs = (await readFile(path.join(out, 'metrics.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, number>)
        .slice(warmup);
      // The last step also saves the final checkpoint and the model: leave it out.
      const timed = recs.slice(0, -1);
      const sum = (k: string) => timed.reduce((a, r) => a + r[k]!, 0);
      const wall = sum('time_step_s');
      return {
        ips: (timed.length * b * w) / wall,
        stepMs: (1000 * wall) / timed.length,
        comm: (sum('time_gather_s') + sum('time_reduce_s')) / wall,
        dataWait: sum('time_data_wait_s') / wall,
        compute: sum('time_compute_s') / wall,
      };
    };
    // What the machine gives two processes doing only the step's compute, measured in every round.
    const job = { batch: b, imageSize: size, warmup: 5 };
    const computePair = async (): Promise<{ alone: number; pair: number[]; speed: number }> => {
      const [alone] = await probe([{ ...job, mode: 'compute', steps: 20 }]);
      const pair = await probe([0, 1].map(() => ({ ...job, mode: 'compute' as const, steps: 20 })));
      return { alone: alone!, pair, speed: pair.reduce((a, t) => a + alone! / t, 0) };
    };

    const runs: Record<number, RunFigures[]> = Object.fromEntries(worlds.map((w) => [w, []]));
    const refs: { alone: number; pair: number[]; speed: number }[] = [];
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    line('round  workers  global batch  images/s  speedup  comm share  data wait share  compute share');
    for (let r = 0; r < rounds; r++) {
      const got: Record<number, RunFigures> = {};
      for (const w of r % 2 ? [...worlds].reverse() : worlds) runs[w]!.push((got[w] = await train(w)));
      for (const w of worlds) {
        const f = got[w]!;
        const base = got[1]?.ips;
        line(
          `${String(r + 1).padStart(5)}  ${String(w).padStart(7)}  ${String(b * w).padStart(12)}  ${f.ips.toFixed(1).padStart(8)}  ${base ? (f.ips / base).toFixed(2).padStart(6) + 'x' : '      -'}  ${pct(f.comm).padStart(10)}  ${pct(f.dataWait).padStart(15)}  ${pct(f.compute).padStart(13)}`,
        );
      }
      if (got[2]) {
        const ref = await computePair();
        refs.push(ref);
        line(
          `       reference: the step's compute alone (forward, backward, write-back; no feed, no collectives) ${ref.alone.toFixed(1)} ms; two such processes at once ${ref.pair.map((t) => t.toFixed(1)).join(' and ')} ms: ${ref.speed.toFixed(2)}x the throughput of one`,
        );
      }
    }
    line(
      `median of ${rounds} round(s): ${worlds.map((w) => `${w} worker${w > 1 ? 's' : ''} ${median(runs[w]!.map((f) => f.ips)).toFixed(1)} images/s`).join(', ')}`,
    );
    if (runs[1]) {
      const speedups = (w: number) => runs[w]!.map((f, i) => f.ips / runs[1]![i]!.ips);
      for (const w of worlds.filter((w) => w > 1))
        line(
          `speedup of ${w} workers over 1 per round: ${speedups(w)
            .map((x) => x.toFixed(2) + 'x')
            .join(', ')}; median ${median(speedups(w)).toFixed(2)}x`,
        );
      if (runs[2]) {
        const s = median(speedups(2));
        line(
          `goal: 2 workers >= 1.80x the images/s of 1 worker: ${s.toFixed(2)}x, median of ${rounds} round(s) (${s >= 1.8 ? 'met' : 'not met'})`,
        );
        line(
          `reference: two processes doing only the step's compute get ${refs.map((x) => x.speed.toFixed(2) + 'x').join(', ')} the throughput of one (median ${median(refs.map((x) => x.speed)).toFixed(2)}x, the most 2 workers can reach here); 2 workers reached ${median(speedups(2).map((x, i) => x / refs[i]!.speed)).toFixed(2)} of it (median of the rounds' ratios)`,
        );
      }
    }
    line(
      `data wait: at most ${pct(Math.max(...worlds.flatMap((w) => runs[w]!.map((f) => f.dataWait))))} of step time in any run (goal: under 2%)`,
    );
    if (runs[2]) {
      const stepMs2 = median(runs[2].map((f) => f.stepMs));
      const sock = await mkdtemp(path.join(tmpdir(), 'cxr-bench-comm-'));
      try {
        const endpoints = [0, 1].map((r) => `ipc://${path.join(sock, `r${r}.sock`)}`);
        const [comm] = await probe([0, 1].map((rank) => ({ ...job, mode: 'comm' as const, steps: 50, rank, endpoints })));
        line(
          `reference: the collectives of one 2-worker step with both ranks ready ${comm!.toFixed(2)} ms = ${((100 * comm!) / stepMs2).toFixed(1)}% of the median 2-worker step (${stepMs2.toFixed(1)} ms); the rest of the comm share is a rank waiting for the other`,
        );
      } finally {
        await rm(sock, { recursive: true, force: true });
      }
    }
    line(
      `load average at end ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
