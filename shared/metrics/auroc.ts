import { mulberry32 } from '../random/generators.js';

/**
 * Area under the ROC curve, exactly: the Mann-Whitney U statistic over (positive, negative)
 * pairs with ties counted one half, computed from average ranks in O(n log n).
 * Null when either class is empty.
 */
export function auroc(scores: ArrayLike<number>, labels: ArrayLike<number>): number | null {
  const n = scores.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a]! - scores[b]!);
  let pos = 0;
  let rankSumPos = 0;
  for (let i = 0; i < n; ) {
    let j = i;
    while (j + 1 < n && scores[order[j + 1]!] === scores[order[i]!]) j++;
    const avgRank = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++)
      if (labels[order[k]!] === 1) {
        pos++;
        rankSumPos += avgRank;
      }
    i = j + 1;
  }
  const neg = n - pos;
  if (pos === 0 || neg === 0) return null;
  return (rankSumPos - (pos * (pos + 1)) / 2) / (pos * neg);
}

export interface LabelScores {
  /** n*L scores, row-major. */
  scores: Float32Array;
  /** n*L raw labels: 1 positive, 0 negative; -1 (uncertain) and NaN (blank) are left out. */
  labels: Float32Array;
  n: number;
  labelNames: readonly string[];
}

/**
 * One label's rows with a 1/0 label, sorted by score once, with tie groups marked, so that any
 * bootstrap replicate (a multiplicity per row) is scored in one linear pass instead of a sort.
 */
export interface SortedColumn {
  rows: Int32Array;
  positive: Uint8Array;
  /** 1 where a new tie group starts. */
  groupStart: Uint8Array;
}

export function sortedColumn(d: LabelScores, l: number): SortedColumn {
  const L = d.labelNames.length;
  const rows: number[] = [];
  for (let i = 0; i < d.n; i++) {
    const v = d.labels[i * L + l]!;
    if (v === 1 || v === 0) rows.push(i);
  }
  rows.sort((a, b) => d.scores[a * L + l]! - d.scores[b * L + l]!);
  const positive = Uint8Array.from(rows, (i) => (d.labels[i * L + l] === 1 ? 1 : 0));
  const groupStart = Uint8Array.from(rows, (i, k) => (k === 0 || d.scores[i * L + l] !== d.scores[rows[k - 1]! * L + l] ? 1 : 0));
  return { rows: Int32Array.from(rows), positive, groupStart };
}

/**
 * Mann-Whitney AUROC of a column where row i counts `weight[i]` times (a bootstrap resample),
 * or once when weight is null: pairs (positive above negative) plus half the tied pairs.
 */
export function weightedAuroc(c: SortedColumn, weight: Int32Array | null): number | null {
  let negBelow = 0;
  let pos = 0;
  let neg = 0;
  let num = 0;
  let gPos = 0;
  let gNeg = 0;
  const flush = () => {
    num += gPos * negBelow + 0.5 * gPos * gNeg;
    negBelow += gNeg;
    pos += gPos;
    neg += gNeg;
    gPos = 0;
    gNeg = 0;
  };
  for (let k = 0; k < c.rows.length; k++) {
    if (c.groupStart[k]) flush();
    const w = weight ? weight[c.rows[k]!]! : 1;
    if (c.positive[k]) gPos += w;
    else gNeg += w;
  }
  flush();
  return pos === 0 || neg === 0 ? null : num / (pos * neg);
}

function meanOf(values: (number | null)[]): number | null {
  const ok = values.filter((v): v is number => v !== null);
  return ok.length ? ok.reduce((a, b) => a + b, 0) / ok.length : null;
}

export interface AurocReport {
  n: number;
  auroc: Record<string, number | null>;
  /** Mean over labels with both classes present. */
  mean_auroc: number | null;
  /** Mean over the competition labels present with both classes. */
  mean_auroc_competition: number | null;
  /** Bootstrap 95% (level) interval per label: [lo, hi], null for a label with one class. */
  ci?: Record<string, [number, number] | null>;
  mean_auroc_ci?: [number, number] | null;
  mean_auroc_competition_ci?: [number, number] | null;
  bootstrap?: { level: number; replicates: number; seed: number };
}

function percentileInterval(xs: number[], level: number): [number, number] | null {
  if (xs.length < 2) return null;
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => {
    const pos = p * (s.length - 1);
    const lo = Math.floor(pos);
    const hi = Math.ceil(pos);
    return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
  };
  return [q((1 - level) / 2), q(1 - (1 - level) / 2)];
}

/**
 * Per-label AUROC, the two means, and optionally a percentile bootstrap CI over images
 * (resampling rows with replacement, seeded; a replicate where a label has one class does not
 * count towards that label's interval).
 */
export function aurocReport(
  d: LabelScores,
  competition: readonly string[],
  bootstrap?: { replicates: number; seed: number; level?: number },
): AurocReport {
  const L = d.labelNames.length;
  const columns = d.labelNames.map((_, l) => sortedColumn(d, l));
  const comp = d.labelNames.map((name) => competition.includes(name));
  const evalRows = (weight: Int32Array | null) => {
    const per = columns.map((c) => weightedAuroc(c, weight));
    return { per, mean: meanOf(per), meanComp: meanOf(per.filter((_, l) => comp[l])) };
  };
  const base = evalRows(null);
  const report: AurocReport = {
    n: d.n,
    auroc: Object.fromEntries(d.labelNames.map((name, l) => [name, base.per[l]!])),
    mean_auroc: base.mean,
    mean_auroc_competition: base.meanComp,
  };
  if (bootstrap && bootstrap.replicates > 0) {
    const level = bootstrap.level ?? 0.95;
    const rand = mulberry32(bootstrap.seed);
    const per: number[][] = Array.from({ length: L }, () => []);
    const means: number[] = [];
    const comps: number[] = [];
    const counts = new Int32Array(d.n);
    for (let b = 0; b < bootstrap.replicates; b++) {
      counts.fill(0);
      for (let i = 0; i < d.n; i++) counts[Math.floor(rand() * d.n)]++;
      const r = evalRows(counts);
      r.per.forEach((v, l) => v !== null && per[l]!.push(v));
      if (r.mean !== null) means.push(r.mean);
      if (r.meanComp !== null) comps.push(r.meanComp);
    }
    report.ci = Object.fromEntries(d.labelNames.map((name, l) => [name, base.per[l] === null ? null : percentileInterval(per[l]!, level)]));
    report.mean_auroc_ci = percentileInterval(means, level);
    report.mean_auroc_competition_ci = base.meanComp === null ? null : percentileInterval(comps, level);
    report.bootstrap = { level, replicates: bootstrap.replicates, seed: bootstrap.seed };
  }
  return report;
}
