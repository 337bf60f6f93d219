import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir, cpus } from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { runSynth } from '../coordinator/data/synth-run.js';
import { toTrainConfig, type TrainArgs } from '../coordinator/commands/train.js';
import { trainDistributed } from '../coordinator/train-job.js';
import { createLogger } from '../shared/log.js';

/**
 * `npm run bench -- scaling [--per-worker 16] [--steps 14] [--warmup 4] [--image-size 32] [--workers 1,2,4]`:
 * data-parallel throughput of the tiny model at a fixed per-worker batch (weak scaling), 1 worker
 * being the reference measured in the same run. Per world size: images/s over the steps after
 * the warm-up, speedup over 1 worker, and the share of step time in communication (embedding
 * all-gather + gradient reduce-scatter, norm all-reduce and parameter all-gather) and in data wait
 * (the slowest rank's per step, as metrics.jsonl records them). `--w-con 0` turns the contrastive
 * loss off: no embedding all-gather and no tape-free forward pass (docs/performance.md "Scaling").
 */
export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'per-worker': { type: 'string', default: '16' },
      steps: { type: 'string', default: '14' },
      warmup: { type: 'string', default: '4' },
      'image-size': { type: 'string', default: '32' },
      workers: { type: 'string', default: '1,2,4' },
      backend: { type: 'string', default: 'wasm' },
      'w-con': { type: 'string', default: '0.5' },
    },
  });
  const b = Number(values['per-worker']);
  const steps = Number(values.steps);
  const warmup = Number(values.warmup);
  const size = Number(values['image-size']);
  const worlds = values.workers!.split(',').map(Number);
  const log = createLogger('bench', 'warn');
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-bench-scaling-'));
  const line = (s: string) => process.stdout.write(s + '\n');
  try {
    const data = path.join(dir, 'data');
    const maxWorld = Math.max(...worlds);
    await runSynth(data, false, { count: Math.max(600, b * maxWorld * (steps + 2) + 50), imageSize: size, seed: 1, fractions: { val: 0.02, test: 0.02 } });
    line(`scaling: tiny model, ${size}px, per-worker batch ${b}, ${steps} steps (first ${warmup} not timed), backend ${values.backend}, contrastive weight ${values['w-con']}; ${cpus().length} cores, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')} at start`);
    line('workers  global batch  images/s  speedup  comm share  data wait share  compute share');
    let base = 0;
    const results: Record<number, number> = {};
    for (const w of worlds) {
      const out = path.join(dir, `w${w}`);
      const args = {
        workers: w, data, out, model: 'tiny', steps, 'batch-size': b * w, seed: 0, eval: 'none', backend: values.backend, lr: 1e-3, 'warmup-steps': 2,
        'min-lr-ratio': 0.1, 'weight-decay': 0.05, 'clip-norm': 1, head: 'text', 'w-cls': 1, 'w-con': Number(values['w-con']), 'w-prior': 0.1, 'label-prior': 'graph',
        uncertainty: 'ignore', 'uncertainty-label': [], blank: 'mask', 'pos-weight': 'none', bootstrap: 0, gpu: false, prefetch: 2,
        'params-check-every': 0, report: false, 'checkpoint-every': 0, 'checkpoint-every-minutes': 0, 'keep-checkpoints': 1,
      } as unknown as TrainArgs;
      await trainDistributed(toTrainConfig(args), { log, progress: false, workerOutput: () => {} });
      const recs = (await readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>).slice(warmup);
      // The last step also saves the final checkpoint and the model: leave it out.
      const timed = recs.slice(0, -1);
      const sum = (k: string) => timed.reduce((a, r) => a + r[k]!, 0);
      const wall = sum('time_step_s');
      const ips = (timed.length * b * w) / wall;
      if (w === 1) base = ips;
      results[w] = ips;
      const pct = (x: number) => `${((100 * x) / wall).toFixed(1)}%`;
      line(
        `${String(w).padStart(7)}  ${String(b * w).padStart(12)}  ${ips.toFixed(1).padStart(8)}  ${base ? (ips / base).toFixed(2).padStart(6) + 'x' : '      -'}  ${pct(sum('time_gather_s') + sum('time_reduce_s')).padStart(10)}  ${pct(sum('time_data_wait_s')).padStart(15)}  ${pct(sum('time_compute_s')).padStart(13)}`,
      );
    }
    if (results[1] && results[2]) line(`goal: 2 workers >= 1.80x the images/s of 1 worker: ${(results[2] / results[1]).toFixed(2)}x (${results[2] / results[1] >= 1.8 ? 'met' : 'not met'})`);
    line(`load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
