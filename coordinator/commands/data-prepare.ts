import type { CommandModule } from 'yargs';
import { FORMATS, type LabelFormat } from '../data/label-csv.js';
import { runPrepare } from '../data/prepare.js';
import { summaryTable } from '../data/summary.js';

interface Args {
  format: LabelFormat;
  labels: string;
  images: string;
  out: string;
  'image-size': number;
  'val-fraction': number;
  'test-fraction': number;
  seed: number;
  overwrite: boolean;
}

export const dataPrepareCommand: CommandModule<object, Args> = {
  command: 'prepare',
  describe: 'turn a label CSV and its images into a dataset directory (Arrow shards + manifest.json)',
  builder: (y) =>
    y
      .option('format', {
        choices: FORMATS,
        demandOption: true,
        describe: 'nih: Data_Entry_2017 CSV; chexpert: CheXpert or MIMIC-CXR label CSV',
      })
      .option('labels', { type: 'string', demandOption: true, describe: 'label CSV, plain or gzip' })
      .option('images', { type: 'string', demandOption: true, describe: 'image root folder' })
      .option('out', { type: 'string', demandOption: true, describe: 'dataset directory to create' })
      .option('image-size', { type: 'number', default: 64, describe: 'square image side in pixels (shorter side scaled, centre crop)' })
      .option('val-fraction', { type: 'number', default: 0.1, describe: 'fraction of images (whole patients) in val' })
      .option('test-fraction', { type: 'number', default: 0.2, describe: 'fraction of images (whole patients) in test' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the patient split' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing dataset at --out' })
      .example('$0 data prepare --format nih --labels Data_Entry_2017_v2020.csv --images nih/ --out data/nih64', ''),
  handler: async (a) => {
    const t0 = performance.now();
    const m = await runPrepare({
      format: a.format,
      labels: a.labels,
      images: a.images,
      out: a.out,
      imageSize: a['image-size'],
      fractions: { val: a['val-fraction'], test: a['test-fraction'] },
      seed: a.seed,
      overwrite: a.overwrite,
    });
    const n = m.splits.train.rows + m.splits.val.rows + m.splits.test.rows;
    const s = (performance.now() - t0) / 1000;
    process.stdout.write(summaryTable(m));
    process.stdout.write(`wrote ${n} images to ${a.out} in ${s.toFixed(1)} s (${(n / s).toFixed(0)} images/s)\n`);
  },
};
