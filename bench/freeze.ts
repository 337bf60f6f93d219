import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir, cpus } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../coordinator/data/synth-run.js';
import { parseTrainConfig } from '../model/train-config.js';
import { trainDistributed } from '../coordinator/train/train-job.js';
import { checkpointsDir, readManifest, ShardReader, stepDir } from '../shared/checkpoint/index.js';
import { createLogger } from '../shared/util/log.js';
import { arg } from './args.js';
import { median } from './median.js';
import { benchTrainArgs } from './train-args.js';

/**
 * `npm run bench -- freeze [--freeze visual] [--model tiny] [--workers 2] [--per-worker 16] [--steps 30] [--warmup 10] [--rounds 2] [--image-size 64]`:
 * what `--freeze` takes out of a data-parallel step, against the same run without it, measured in
 * the same process. Per run: the elements of the gradient each rank reduce-scatters and of the
 * parameters it all-gathers per step (the packed trainable vector: the m section of the final
 * checkpoint's shards, read from their headers, is each rank's share of it), the optimizer state
 * saved (m and v bytes over all shards), and the median per-step seconds in those collectives
 * (`time_reduce_s` of metrics.jsonl, the steps after the warm-up, the last one left out: it saves).
 * Rounds alternate the order of the two runs, so a drift of the shared machine favours neither.
 */
export async function run(argv: string[]): Promise<void> {
  const freeze = arg(argv, 'freeze', 'visual');
  const model = arg(argv, 'model', 'tiny');
  const workers = Number(arg(argv, 'workers', '2'));
  const b = Number(arg(argv, 'per-worker', '16'));
  const steps = Number(arg(argv, 'steps', '30'));
  const warmup = Number(arg(argv, 'warmup', '10'));
  const rounds = Number(arg(argv, 'rounds', '2'));
  const size = Number(arg(argv, 'image-size', '64'));
  if (!(steps > warmup + 1) || !(rounds >= 1) || !(workers >= 2))
    throw new Error('freeze: need --steps > --warmup + 1, --rounds >= 1, --workers >= 2');
  const log = createLogger('bench', 'warn');
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-bench-freeze-'));
  const line = (s: string) => process.stdout.write(s + '\n');
  try {
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: b * workers * (steps + 2) + 50, imageSize: size, seed: 1, fractions: { val: 0.02, test: 0.02 } });
    line(
      `freeze: ${model} model, ${size}px, ${workers} workers, per-worker batch ${b}, ${steps} steps (first ${warmup} not timed), ${rounds} round(s); ${cpus().length} cores, load average ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')} at start`,
    );
    const train = async (spec: string[]) => {
      const out = path.join(dir, spec.length ? 'frozen' : 'plain');
      await rm(out, { recursive: true, force: true });
      const args = benchTrainArgs({ workers, data, out, model, steps, 'batch-size': b * workers, freeze: spec });
      await trainDistributed(parseTrainConfig(args), { log, progress: false, workerOutput: () => {} });
      const ck = stepDir(checkpointsDir(out), steps);
      const manifest = await readManifest(ck);
      let moments = 0;
      for (const s of manifest.shards) {
        const r = await ShardReader.open(path.join(ck, s.file));
        moments += r.header.sectionBytes[1] + r.header.sectionBytes[2];
        await r.close();
      }
      const recs = (await readFile(path.join(out, 'metrics.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, number>)
        .slice(warmup, -1);
      return {
        total: manifest.layout.total,
        reduced: moments / 8,
        moments,
        reduceMs: 1000 * median(recs.map((r) => r.time_reduce_s!)),
        stepMs: 1000 * median(recs.map((r) => r.time_step_s!)),
      };
    };
    line('round  run                parameters  reduced/step (elements, bytes)  optimizer state saved  reduce+gather ms/step  step ms');
    const kib = (x: number) => `${(x / 1024).toFixed(0)} KiB`;
    for (let r = 0; r < rounds; r++) {
      for (const spec of r % 2 ? [[freeze], []] : [[], [freeze]]) {
        const f = await train(spec);
        line(
          `${String(r + 1).padStart(5)}  ${(spec.length ? `--freeze ${freeze}` : 'no --freeze').padEnd(17)}  ${String(f.total).padStart(10)}  ${`${f.reduced}, ${kib(4 * f.reduced)}`.padStart(30)}  ${kib(f.moments).padStart(21)}  ${f.reduceMs.toFixed(2).padStart(21)}  ${f.stepMs.toFixed(1).padStart(7)}`,
        );
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
