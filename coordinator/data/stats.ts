import type { LabelTable } from './label-csv.js';
import { formatTable } from './table.js';

export interface LabelStats {
  file: string;
  format: string;
  labelSet: string;
  images: number;
  patients: number;
  studies: number;
  /** Per label: counts of 1, 0, -1 and blank. */
  labels: { name: string; positive: number; negative: number; uncertain: number; blank: number }[];
}

export function labelStats(t: LabelTable): LabelStats {
  const L = t.labelSet.labels.length;
  const counts = Array.from({ length: L }, () => [0, 0, 0, 0]);
  const patients = new Set<string>();
  const studies = new Set<string>();
  for (const r of t.rows) {
    patients.add(r.subjectId);
    studies.add(r.studyId);
    for (let k = 0; k < L; k++) {
      const v = r.labels[k]!;
      counts[k]![v === 1 ? 0 : v === 0 ? 1 : v === -1 ? 2 : 3]!++;
    }
  }
  return {
    file: t.file,
    format: t.format,
    labelSet: t.labelSet.name,
    images: t.rows.length,
    patients: patients.size,
    studies: studies.size,
    labels: t.labelSet.labels.map((name, k) => {
      const [positive, negative, uncertain, blank] = counts[k]!;
      return { name, positive: positive!, negative: negative!, uncertain: uncertain!, blank: blank! };
    }),
  };
}

export function formatStats(s: LabelStats): string {
  const pct = (n: number) => `${((100 * n) / s.images).toFixed(1)}%`;
  const head = `${s.file}: ${s.images} images, ${s.patients} patients, ${s.studies} studies (${s.format}, label set ${s.labelSet})\n`;
  return (
    head +
    formatTable(
      ['label', '1 (pos)', '0 (neg)', '-1 (uncertain)', 'blank', 'pos %'],
      s.labels.map((l) => [l.name, l.positive, l.negative, l.uncertain, l.blank, pct(l.positive)]),
    )
  );
}
