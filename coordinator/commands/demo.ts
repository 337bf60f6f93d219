import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import yargs from 'yargs';
import { checkpointFlags } from '../train/checkpoint-flags.js';
import { jobOptions, runTraining, trainOptions, type TrainArgs } from './train.js';
import { readManifest } from '../../shared/dataset/manifest.js';
import { inspectDataset, type InspectReport } from '../data/inspect.js';
import { summaryTable } from '../data/summary.js';
import { runSynth, synthSource } from '../data/synth-run.js';
import type { SynthOptions } from '../data/synth.js';
import { REPORT_FILE } from '../../shared/run/files.js';

interface Args {
  dir: string;
  count: number;
  'image-size': number;
  seed: number;
  regenerate: boolean;
  workers: number;
  epochs: number;
  'batch-size': number;
  train: boolean;
}

/**
 * `coordinator demo` (what `npm start` runs): the main job on built-in data. Generates the
 * synthetic dataset (reused when one made with the same options is already there and verifies),
 * then trains with 4 worker processes, evaluates on the test split after each epoch and at the
 * end, and writes the report. Sized to finish in about five minutes on a 2-core machine.
 */
export const demoCommand: CommandModule<object, Args> = {
  command: 'demo',
  describe: 'the main job on built-in synthetic data (npm start)',
  builder: (y) =>
    y
      .option('dir', { type: 'string', default: path.join('runs', 'demo'), describe: 'working directory of the demo' })
      .option('count', { type: 'number', default: 3000, describe: 'synthetic images' })
      .option('image-size', { type: 'number', default: 64, describe: 'image side in pixels' })
      .option('seed', { type: 'number', default: 0, describe: 'seed' })
      .option('regenerate', { type: 'boolean', default: false, describe: 'regenerate the data even if an identical dataset exists' })
      .option('workers', { type: 'number', default: 4, describe: 'worker processes' })
      .option('epochs', { type: 'number', default: 3, describe: 'passes over the training split' })
      .option('batch-size', { type: 'number', default: 64, describe: 'global batch size' })
      .option('train', { type: 'boolean', default: true, describe: 'train after making the data (--no-train: data only)' })
      .example('$0 demo', 'what npm start runs: synthetic data, 4 workers, evaluation, report')
      .example('$0 demo --workers 2 --epochs 1', 'a shorter run'),
  handler: async (a) => {
    const dataDir = path.join(a.dir, 'data');
    const o: SynthOptions = { count: a.count, imageSize: a['image-size'], seed: a.seed, fractions: { val: 0.1, test: 0.2 } };
    let report = a.regenerate ? null : await reusableSynth(dataDir, o);
    if (report) {
      process.stdout.write(`demo: reusing ${dataDir} (same options, shards verified; --regenerate to rebuild)\n`);
    } else {
      const t0 = performance.now();
      await runSynth(dataDir, true, o);
      process.stdout.write(
        `demo: generated ${a.count} synthetic images in ${dataDir} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
      );
      report = await inspectDataset(dataDir);
      if (!report.ok)
        throw new Error(
          `demo: the freshly generated ${dataDir} failed verification: ${JSON.stringify(report.shards.filter((s) => !s.ok))}`,
        );
    }
    process.stdout.write(summaryTable(report.manifest));
    process.stdout.write(`demo: dataset verified (${report.shards.length} shards, sha256 ok)\n`);
    if (!a.train) return;
    const runDir = path.join(a.dir, 'run');
    process.stdout.write(
      `demo: training the tiny model with ${a.workers} worker processes, ${a.epochs} epochs, global batch ${a['batch-size']} -> ${runDir}\n`,
    );
    // The train command's own parser, so the demo run has exactly the defaults of `coordinator --data ...`.
    const argv = [
      '--workers',
      String(a.workers),
      '--data',
      dataDir,
      '--out',
      runDir,
      '--model',
      'tiny',
      '--epochs',
      String(a.epochs),
      '--batch-size',
      String(a['batch-size']),
      '--seed',
      String(a.seed),
    ];
    const targs = (await checkpointFlags(jobOptions(trainOptions(yargs(argv).strict()))).parseAsync()) as unknown as TrainArgs;
    await runTraining(targs);
    process.stdout.write(`demo: done; open ${path.join(runDir, REPORT_FILE)} in a browser\n`);
  },
};

/** The inspection of an existing dataset made with the same options that verifies, else null. */
async function reusableSynth(dir: string, o: SynthOptions): Promise<InspectReport | null> {
  try {
    const m = await readManifest(dir);
    if (JSON.stringify(m.source) !== JSON.stringify(synthSource(o))) return null;
    const r = await inspectDataset(dir);
    return r.ok ? r : null;
  } catch {
    return null;
  }
}
