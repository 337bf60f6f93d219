import type { EvalResult } from '../../shared/run/files.js';

/**
 * Run-vs-run comparison of per-label AUROC, the research's headline picture. Differences are
 * in AUROC points (AUROC x 100); more than 0.5 points either way counts as a gain or a loss.
 */
export const SIGNIFICANT_POINTS = 0.5;

export type Verdict = 'gain' | 'loss' | 'same' | 'n/a';

export interface ComparisonRow {
  label: string;
  a: number | null;
  b: number | null;
  /** (b - a) x 100, or null when either side has no AUROC (no positives in its test split). */
  diffPoints: number | null;
  verdict: Verdict;
  /** Summary rows (means) are drawn apart from the labels. */
  summary?: boolean;
}

export function verdictOf(diffPoints: number | null): Verdict {
  if (diffPoints === null) return 'n/a';
  if (diffPoints > SIGNIFICANT_POINTS) return 'gain';
  if (diffPoints < -SIGNIFICANT_POINTS) return 'loss';
  return 'same';
}

function row(label: string, a: number | null | undefined, b: number | null | undefined, summary = false): ComparisonRow {
  const av = a ?? null,
    bv = b ?? null;
  // Rounded to 1e-9 points so that decimal inputs sit exactly on the threshold (0.895 - 0.9 is
  // -0.5000000000000004 in binary floating point, and must not count as a loss).
  const diffPoints = av === null || bv === null ? null : Math.round((bv - av) * 100 * 1e9) / 1e9;
  return { label, a: av, b: bv, diffPoints, verdict: verdictOf(diffPoints), ...(summary ? { summary } : {}) };
}

/** Rows for every label of either run (A's order first), then the mean and competition-mean rows. */
export function compareEvals(a: EvalResult, b: EvalResult): ComparisonRow[] {
  return compareEvalsMany(a, [b])[0]!;
}

/**
 * Each run against one baseline: one row list per run, all over the same labels (every run's
 * label, the baseline's order first), so the lists line up row by row in a grouped chart.
 */
export function compareEvalsMany(base: EvalResult, runs: readonly EvalResult[]): ComparisonRow[][] {
  const labels = [...Object.keys(base.auroc)];
  for (const r of runs) for (const l of Object.keys(r.auroc)) if (!labels.includes(l)) labels.push(l);
  return runs.map((b) => [
    ...labels.map((l) => row(l, base.auroc[l], b.auroc[l])),
    row('Mean', base.mean_auroc, b.mean_auroc, true),
    row('Competition mean', base.mean_auroc_competition, b.mean_auroc_competition, true),
  ]);
}

const fmtAuroc = (x: number | null) => (x === null ? '-' : x.toFixed(4));
/** Signed to two decimals; the sign is the shown value's (-0.003 is \u00b10.00, not \u22120.00). */
export const fmtPoints = (d: number | null) => {
  if (d === null) return '-';
  const shown = Math.round(d * 100) / 100;
  return `${shown > 0 ? '+' : shown < 0 ? '\u2212' : '\u00b1'}${Math.abs(shown).toFixed(2)}`;
};

/**
 * The comparison as a terminal table. With colour, gains are green and losses red; without
 * (pipes, logs), a verdict column carries the same information.
 */
export function formatComparisonTable(rows: readonly ComparisonRow[], opts: { nameA: string; nameB: string; color: boolean }): string {
  const head = ['label', opts.nameA, opts.nameB, 'diff (pts)', ...(opts.color ? [] : [''])];
  const word = (v: Verdict) => (v === 'gain' || v === 'loss' ? v : '');
  const body = rows.map((r) => [r.label, fmtAuroc(r.a), fmtAuroc(r.b), fmtPoints(r.diffPoints), ...(opts.color ? [] : [word(r.verdict)])]);
  const widths = head.map((h, c) => Math.max(h.length, ...body.map((r) => r[c]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, c) => (c === 0 || c === 4 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
      .join('  ')
      .trimEnd();
  const paint = (text: string, v: Verdict) => (v === 'gain' ? `\x1b[32m${text}\x1b[0m` : v === 'loss' ? `\x1b[31m${text}\x1b[0m` : text);
  const rule = widths
    .map((w) => '-'.repeat(w))
    .join('  ')
    .trimEnd();
  const out = [line(head), rule];
  rows.forEach((r, i) => {
    if (r.summary && !rows[i - 1]?.summary) out.push(rule);
    const text = line(body[i]!);
    if (!opts.color) out.push(text);
    else out.push(r.summary ? `\x1b[1m${paint(text, r.verdict)}\x1b[0m` : paint(text, r.verdict));
  });
  out.push('');
  out.push(
    `diff = (${opts.nameB} - ${opts.nameA}) x 100 AUROC points; beyond \u00b1${SIGNIFICANT_POINTS} is a gain${opts.color ? ' (green)' : ''} or a loss${opts.color ? ' (red)' : ''}.`,
  );
  return out.join('\n') + '\n';
}
