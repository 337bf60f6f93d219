import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { readManifest } from '../../shared/dataset/manifest.js';
import { inspectDataset, type InspectReport } from '../data/inspect.js';
import { summaryTable } from '../data/summary.js';
import { runSynth, synthSource } from '../data/synth-run.js';
import type { SynthOptions } from '../data/synth.js';

interface Args {
  dir: string;
  count: number;
  'image-size': number;
  seed: number;
  regenerate: boolean;
}

/**
 * `coordinator demo` (what `npm start` runs): the main job on the embedded default data. Today:
 * generate the synthetic dataset (reused when one made with the same options is already there
 * and verifies) and inspect it. It grows into the 4-worker training run.
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
      .option('regenerate', { type: 'boolean', default: false, describe: 'regenerate the data even if an identical dataset exists' }),
  handler: async (a) => {
    const dataDir = path.join(a.dir, 'data');
    const o: SynthOptions = { count: a.count, imageSize: a['image-size'], seed: a.seed, fractions: { val: 0.1, test: 0.2 } };
    let report = a.regenerate ? null : await reusableSynth(dataDir, o);
    if (report) {
      process.stdout.write(`demo: reusing ${dataDir} (same options, shards verified; --regenerate to rebuild)\n`);
    } else {
      const t0 = performance.now();
      await runSynth(dataDir, true, o);
      process.stdout.write(`demo: generated ${a.count} synthetic images in ${dataDir} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      report = await inspectDataset(dataDir);
      if (!report.ok) throw new Error(`demo: the freshly generated ${dataDir} failed verification: ${JSON.stringify(report.shards.filter((s) => !s.ok))}`);
    }
    process.stdout.write(summaryTable(report.manifest));
    process.stdout.write(`demo: dataset verified (${report.shards.length} shards, sha256 ok)\n`);
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
