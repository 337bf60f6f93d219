import type { CommandModule } from 'yargs';
import { runSynth } from '../data/synth-run.js';
import { summaryTable } from '../data/summary.js';

interface Args {
  out: string;
  count: number;
  'image-size': number;
  seed: number;
  'val-fraction': number;
  'test-fraction': number;
  overwrite: boolean;
}

export const dataSynthCommand: CommandModule<object, Args> = {
  command: 'synth',
  describe: 'generate a synthetic chest-X-ray-like dataset (CheXpert-14 labels) with a learnable sign per finding',
  builder: (y) =>
    y
      .option('out', { type: 'string', demandOption: true, describe: 'dataset directory to create' })
      .option('count', { type: 'number', demandOption: true, describe: 'number of images' })
      .option('image-size', { type: 'number', default: 64, describe: 'square image side in pixels' })
      .option('seed', { type: 'number', default: 0, describe: 'everything generated is a function of the seed' })
      .option('val-fraction', { type: 'number', default: 0.1, describe: 'fraction of images (whole patients) in val' })
      .option('test-fraction', { type: 'number', default: 0.2, describe: 'fraction of images (whole patients) in test' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing dataset at --out' })
      .example('$0 data synth --out data/synth --count 3000', '3,000 images of 64x64'),
  handler: async (a) => {
    const t0 = performance.now();
    const m = await runSynth(a.out, a.overwrite, {
      count: a.count,
      imageSize: a['image-size'],
      seed: a.seed,
      fractions: { val: a['val-fraction'], test: a['test-fraction'] },
    });
    process.stdout.write(summaryTable(m));
    process.stdout.write(`wrote ${a.count} synthetic images to ${a.out} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  },
};
