import { SPLITS, type Manifest } from '../../shared/dataset/manifest.js';
import { formatTable } from './table.js';

/** The end-of-run table: images, patients, studies and positives per label, per split. */
export function summaryTable(m: Manifest): string {
  const total = (f: (s: Manifest['splits']['train']) => number) => SPLITS.reduce((a, s) => a + f(m.splits[s]), 0);
  const rows: (string | number)[][] = [
    ['images', ...SPLITS.map((s) => m.splits[s].rows), total((s) => s.rows)],
    ['patients', ...SPLITS.map((s) => m.splits[s].patients), total((s) => s.patients)],
    ['studies', ...SPLITS.map((s) => m.splits[s].studies), total((s) => s.studies)],
    ...m.labels.map((l) => [`  ${l}`, ...SPLITS.map((s) => m.splits[s].positives[l] ?? 0), total((s) => s.positives[l] ?? 0)]),
  ];
  return formatTable(['', ...SPLITS, 'total'], rows) + `(label rows: images with label = 1)\n`;
}
