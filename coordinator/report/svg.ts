import { niceTicks } from './math.js';
import { SIGNIFICANT_POINTS, fmtPoints, type ComparisonRow } from './compare.js';

/**
 * The report's charts as standalone SVG documents (inline in the HTML, and saved as
 * `report-*.svg` for papers). Pure string builders: no DOM, no network, no fonts to fetch.
 * Every text that comes from a file goes through `esc`.
 */

export function esc(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Categorical colours (Tableau 10 then its light variants): distinct, print-safe. */
export const PALETTE = [
  '#4e79a7',
  '#f28e2b',
  '#e15759',
  '#76b7b2',
  '#59a14f',
  '#edc948',
  '#b07aa1',
  '#ff9da7',
  '#9c755f',
  '#bab0ac',
  '#1f77b4',
  '#aec7e8',
  '#ff7f0e',
  '#98df8a',
  '#c5b0d5',
  '#c49c94',
  '#f7b6d2',
  '#dbdb8d',
  '#9edae5',
  '#17becf',
];
export const GAIN = '#1a9641';
export const LOSS = '#d7191c';
export const NEUTRAL = '#9e9e9e';

const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

const n2 = (x: number) => (Math.round(x * 100) / 100).toString();

export function fmtTick(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(1).replace('e-', 'e\u2212');
  return Number(x.toPrecision(4)).toString();
}

function svgOpen(kind: string, width: number, height: number, title: string): string {
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="${esc(kind)}" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(title)}" ${FONT} font-size="11">` +
    `<rect width="${width}" height="${height}" fill="#fff"/>` +
    `<text x="12" y="18" font-size="13" font-weight="600" fill="#222">${esc(title)}</text>`
  );
}

/** Rough width of 11px sans-serif text, for margins (no font metrics without a DOM). */
const textWidth = (text: string) => text.length * 6.6;
const MAX_LABEL = 44;
/** Long names are cut with an ellipsis on the axis; the full name stays in the tooltip. */
export const clip = (text: string) => (text.length > MAX_LABEL ? text.slice(0, MAX_LABEL - 1) + '\u2026' : text);
const labelMargin = (labels: readonly string[]) =>
  Math.max(120, Math.min(MAX_LABEL, Math.max(0, ...labels.map((l) => l.length))) * 6.2 + 20);

function emptyNote(x: number, y: number, text: string): string {
  return `<text x="${x}" y="${y}" text-anchor="middle" fill="#888">${esc(text)}</text>`;
}

export interface Series {
  name: string;
  points: [number, number][];
  color: string;
  /** Drawn thin and light (raw values under a smoothed line). */
  faint?: boolean;
  dashed?: boolean;
  /** Left out of the legend (e.g. the raw twin of a smoothed series). */
  noLegend?: boolean;
}

export interface LineChartSpec {
  kind: string;
  title: string;
  xLabel: string;
  yLabel?: string;
  series: Series[];
  width?: number;
  height?: number;
}

export function lineChart(spec: LineChartSpec): string {
  const W = spec.width ?? 560,
    H = spec.height ?? 250;
  const m = { l: spec.yLabel ? 70 : 58, r: 14, t: 40, b: 40 };
  const pw = W - m.l - m.r,
    ph = H - m.t - m.b;
  const all = spec.series.flatMap((s) => s.points);
  let out = svgOpen(spec.kind, W, H, spec.title);
  if (all.length === 0) return out + emptyNote(W / 2, H / 2, 'no data') + '</svg>';
  let x0 = Math.min(...all.map((p) => p[0])),
    x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => p[1])),
    y1 = Math.max(...all.map((p) => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  // Extend the y range to whole tick steps so the curve starts and ends between gridlines.
  let yt = niceTicks(y0, y1, 5);
  if (yt.length >= 2) {
    const step = yt[1]! - yt[0]!;
    y0 = Math.floor(y0 / step + 1e-9) * step;
    y1 = Math.ceil(y1 / step - 1e-9) * step;
    yt = Array.from({ length: Math.round((y1 - y0) / step) + 1 }, (_, i) => Number((y0 + i * step).toPrecision(12)));
  }
  if (y1 === y0) y1 = y0 + 1;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.t + ph - ((y - y0) / (y1 - y0)) * ph;
  out += `<g stroke="#e6e6e6">`;
  for (const t of yt) out += `<line x1="${m.l}" x2="${m.l + pw}" y1="${n2(sy(t))}" y2="${n2(sy(t))}"/>`;
  out += `</g><g fill="#555" text-anchor="end">`;
  for (const t of yt) out += `<text x="${m.l - 6}" y="${n2(sy(t) + 4)}">${esc(fmtTick(t))}</text>`;
  out += `</g><g fill="#555" text-anchor="middle">`;
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1) continue;
    out += `<line x1="${n2(sx(t))}" x2="${n2(sx(t))}" y1="${m.t + ph}" y2="${m.t + ph + 4}" stroke="#999"/>`;
    out += `<text x="${n2(sx(t))}" y="${m.t + ph + 16}">${esc(fmtTick(t))}</text>`;
  }
  out += `</g><line x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}" stroke="#999"/>`;
  out += `<text x="${m.l + pw / 2}" y="${H - 6}" text-anchor="middle" fill="#444">${esc(spec.xLabel)}</text>`;
  if (spec.yLabel)
    out += `<text transform="translate(13 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle" fill="#444">${esc(spec.yLabel)}</text>`;
  for (const s of spec.series) {
    if (s.points.length === 0) continue;
    const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${n2(sx(p[0]))} ${n2(sy(p[1]))}`).join('');
    out +=
      `<path class="series" data-series="${esc(s.name)}" d="${d}" fill="none" stroke="${s.color}" ` +
      `stroke-width="${s.faint ? 1 : 1.8}" stroke-opacity="${s.faint ? 0.3 : 1}"${s.dashed ? ' stroke-dasharray="5 3"' : ''}>` +
      `<title>${esc(s.name)}</title></path>`;
  }
  // Legend along the top right, right-aligned, one entry per named series.
  let lx = W - m.r;
  for (const s of [...spec.series].reverse()) {
    if (s.noLegend) continue;
    const label = esc(s.name);
    const w = 34 + textWidth(s.name);
    lx -= w;
    out += `<line x1="${n2(lx)}" x2="${n2(lx + 16)}" y1="31" y2="31" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5 3"' : ''}/>`;
    out += `<text x="${n2(lx + 20)}" y="34" fill="#333">${label}</text>`;
  }
  return out + '</svg>';
}

export interface AurocRun {
  name: string;
  auroc: Record<string, number | null>;
  ci?: Record<string, [number, number] | null>;
  color: string;
  /** Summary rows drawn after the labels (the means), in the same order for every run. */
  means?: { label: string; value: number | null; ci?: [number, number] | null }[];
}

/**
 * Per-label AUROC as dots with confidence-interval whiskers; one row per label, one dot per run;
 * then the runs' summary rows (the means), set apart in bold.
 */
export function aurocChart(labels: readonly string[], runs: readonly AurocRun[], title = 'Per-label AUROC (95% CI)'): string {
  const rows = [
    ...labels.map((label) => ({ label, summary: false, of: (r: AurocRun) => ({ v: r.auroc[label], ci: r.ci?.[label] }) })),
    ...(runs.find((r) => r.means)?.means ?? []).map((mean, j) => ({
      label: mean.label,
      summary: true,
      of: (r: AurocRun) => ({ v: r.means?.[j]?.value, ci: r.means?.[j]?.ci }),
    })),
  ];
  const gap = rows.some((r) => r.summary) ? 8 : 0;
  // Runs' dots sit 9 px apart within a label's row.
  const rowH = runs.length > 1 ? Math.max(26, 9 * runs.length + 8) : 20;
  const m = { l: labelMargin(rows.map((r) => r.label)), r: 70, t: 44, b: 40 };
  const W = m.l + 440,
    H = m.t + m.b + rowH * Math.max(1, rows.length) + gap;
  const pw = W - m.l - m.r;
  let out = svgOpen('auroc', W, H, title);
  const values = runs
    .flatMap((r) => rows.flatMap((row) => [row.of(r).v, ...(row.of(r).ci ?? [])]))
    .filter((x): x is number => typeof x === 'number');
  if (values.length === 0) return out + emptyNote(W / 2, H / 2, 'no AUROC values') + '</svg>';
  const x0 = Math.min(0.5, Math.floor(Math.min(...values) * 20) / 20),
    x1 = 1;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  out += `<g stroke="#e6e6e6">`;
  const ticks = niceTicks(x0, x1, 5).filter((t) => t >= x0 && t <= x1);
  for (const t of ticks) out += `<line x1="${n2(sx(t))}" x2="${n2(sx(t))}" y1="${m.t - 4}" y2="${H - m.b}"/>`;
  out += `</g><g fill="#555" text-anchor="middle">`;
  for (const t of ticks) out += `<text x="${n2(sx(t))}" y="${H - m.b + 16}">${esc(fmtTick(t))}</text>`;
  out += `</g><text x="${m.l + pw / 2}" y="${H - 6}" text-anchor="middle" fill="#444">AUROC</text>`;
  rows.forEach((row, i) => {
    const { label } = row;
    const yc = m.t + i * rowH + rowH / 2 + (row.summary ? gap : 0);
    if (i % 2 === 0) out += `<rect x="${m.l}" y="${n2(yc - rowH / 2)}" width="${pw}" height="${rowH}" fill="#f7f7f7"/>`;
    out += `<text x="${m.l - 8}" y="${n2(yc + 4)}" text-anchor="end" fill="#222"${row.summary ? ' font-weight="600"' : ''}>${esc(clip(label))}<title>${esc(label)}</title></text>`;
    runs.forEach((run, k) => {
      const y = runs.length > 1 ? yc + (k - (runs.length - 1) / 2) * 9 : yc;
      const { v, ci } = row.of(run);
      if (typeof v !== 'number') {
        out += `<text class="na" x="${n2(sx(x0) + 6)}" y="${n2(y + 4)}" fill="#999">n/a (${esc(run.name)})</text>`;
        return;
      }
      const tip = `${run.name} \u2014 ${label}: ${v.toFixed(4)}${ci ? ` [${ci[0].toFixed(4)}, ${ci[1].toFixed(4)}]` : ''}`;
      out += `<g class="mark" data-label="${esc(label)}" data-run="${esc(run.name)}"><title>${esc(tip)}</title>`;
      if (ci) {
        const a = Math.max(x0, ci[0]),
          b = Math.min(x1, ci[1]);
        out += `<line x1="${n2(sx(a))}" x2="${n2(sx(b))}" y1="${n2(y)}" y2="${n2(y)}" stroke="${run.color}" stroke-width="2" stroke-opacity="0.55"/>`;
        for (const e of [a, b])
          out += `<line x1="${n2(sx(e))}" x2="${n2(sx(e))}" y1="${n2(y - 3)}" y2="${n2(y + 3)}" stroke="${run.color}" stroke-width="1.5"/>`;
      }
      out += `<circle cx="${n2(sx(v))}" cy="${n2(y)}" r="4" fill="${run.color}"/></g>`;
      if (runs.length === 1) out += `<text x="${W - m.r + 8}" y="${n2(y + 4)}" fill="#333">${v.toFixed(3)}</text>`;
    });
  });
  let lx = W - m.r;
  for (const run of [...runs].reverse()) {
    lx -= 34 + textWidth(run.name);
    out += `<circle cx="${n2(lx + 6)}" cy="31" r="4" fill="${run.color}"/><text x="${n2(lx + 14)}" y="34" fill="#333">${esc(run.name)}</text>`;
  }
  return out + '</svg>';
}

/** Diverging bars of B - A in AUROC points; green gains and red losses beyond the threshold. */
export function diffChart(rows: readonly ComparisonRow[], nameA: string, nameB: string): string {
  return diffsChart(nameA, [{ name: nameB, color: NEUTRAL, rows }]);
}

export interface DiffRun {
  name: string;
  color: string;
  /** The run against the baseline (compareEvalsMany: every run's rows have the same labels, in order). */
  rows: readonly ComparisonRow[];
}

/**
 * Diverging bars of each run minus the baseline in AUROC points; green gains and red losses beyond
 * the threshold. With several runs each label's row holds one bar per run, in legend order, each
 * tagged at the axis with the run's colour (the colour it has in the AUROC chart).
 */
export function diffsChart(nameA: string, runs: readonly DiffRun[]): string {
  const multi = runs.length > 1;
  const rows = runs[0]?.rows ?? [];
  const sub = 11;
  const rowH = multi ? runs.length * sub + 8 : 20;
  const barH = multi ? sub - 2 : rowH - 8;
  const m = { l: labelMargin(rows.map((r) => r.label)) + (multi ? 10 : 0), r: 60, t: 44, b: 40 };
  const W = m.l + 440,
    H = m.t + m.b + rowH * rows.length + 8;
  const pw = W - m.l - m.r;
  const title = multi ? `AUROC difference from ${nameA} (points)` : `AUROC difference: ${runs[0]?.name ?? ''} \u2212 ${nameA} (points)`;
  let out = svgOpen('compare', W, H, title);
  const diffs = runs.flatMap((run) => run.rows.map((r) => r.diffPoints)).filter((x): x is number => x !== null);
  const lim = Math.max(1, ...diffs.map(Math.abs)) * 1.1;
  const sx = (x: number) => m.l + ((x + lim) / (2 * lim)) * pw;
  out += `<rect x="${n2(sx(-SIGNIFICANT_POINTS))}" y="${m.t - 4}" width="${n2(sx(SIGNIFICANT_POINTS) - sx(-SIGNIFICANT_POINTS))}" height="${H - m.t - m.b + 4}" fill="#eee"/>`;
  const ticks = niceTicks(-lim, lim, 6).filter((t) => Math.abs(t) <= lim);
  out += `<g fill="#555" text-anchor="middle">`;
  for (const t of ticks)
    out += `<line x1="${n2(sx(t))}" x2="${n2(sx(t))}" y1="${H - m.b}" y2="${H - m.b + 4}" stroke="#999"/><text x="${n2(sx(t))}" y="${H - m.b + 16}">${esc(fmtTick(t))}</text>`;
  out += `</g><text x="${m.l + pw / 2}" y="${H - 6}" text-anchor="middle" fill="#444">AUROC points (\u00b1${SIGNIFICANT_POINTS} band shaded)</text>`;
  rows.forEach((label, i) => {
    const y = m.t + i * rowH + (label.summary ? 8 : 0);
    out += `<text x="${m.l - (multi ? 18 : 8)}" y="${n2(y + rowH / 2 + 4)}" text-anchor="end" fill="#222"${label.summary ? ' font-weight="600"' : ''}>${esc(clip(label.label))}<title>${esc(label.label)}</title></text>`;
    runs.forEach((run, k) => {
      const r = run.rows[i]!;
      const by = y + 4 + k * sub;
      const ty = multi ? by + barH / 2 + 3.5 : y + 14;
      const size = multi ? ' font-size="9.5"' : '';
      if (multi)
        out += `<rect class="tag" x="${m.l - 14}" y="${by + 1}" width="7" height="${barH - 2}" fill="${run.color}"><title>${esc(run.name)}</title></rect>`;
      if (r.diffPoints === null) {
        out += `<text x="${n2(sx(0) + 6)}" y="${ty}"${size} fill="#999">n/a</text>`;
        return;
      }
      const color = r.verdict === 'gain' ? GAIN : r.verdict === 'loss' ? LOSS : NEUTRAL;
      const a = sx(Math.min(0, r.diffPoints)),
        b = sx(Math.max(0, r.diffPoints));
      const tip = multi ? `${run.name} \u2212 ${nameA}, ${r.label}` : r.label;
      out += `<rect class="bar ${r.verdict}" data-label="${esc(r.label)}"${multi ? ` data-run="${esc(run.name)}"` : ''} x="${n2(a)}" y="${by}" width="${n2(Math.max(1, b - a))}" height="${barH}" fill="${color}">`;
      out += `<title>${esc(`${tip}: ${fmtPoints(r.diffPoints)} points`)}</title></rect>`;
      // The value goes beyond the bar's end, or inside it (white) when that would run into the axis labels.
      const text = fmtPoints(r.diffPoints);
      const inside = r.diffPoints < 0 ? a - 4 - textWidth(text) < m.l : b + 4 + textWidth(text) > W - 4;
      const tx = r.diffPoints >= 0 ? (inside ? b - 4 : b + 4) : inside ? a + 4 : a - 4;
      const anchor = r.diffPoints >= 0 !== inside ? 'start' : 'end';
      out += `<text x="${n2(tx)}" y="${n2(ty)}" text-anchor="${anchor}"${size} fill="${inside ? '#fff' : color}">${esc(text)}</text>`;
    });
  });
  out += `<line x1="${n2(sx(0))}" x2="${n2(sx(0))}" y1="${m.t - 4}" y2="${H - m.b}" stroke="#444"/>`;
  if (multi) {
    let lx = W - m.r;
    for (const run of [...runs].reverse()) {
      lx -= 34 + textWidth(run.name);
      out += `<rect x="${n2(lx + 2)}" y="27" width="8" height="8" fill="${run.color}"/><text x="${n2(lx + 14)}" y="34" fill="#333">${esc(run.name)}</text>`;
    }
  }
  return out + '</svg>';
}

/** Diverging colour for a cosine similarity in [-1, 1]: blue, white at 0, red. */
export function divergingColor(v: number): string {
  const t = Math.max(-1, Math.min(1, v));
  const [r, g, b] = t >= 0 ? [255, 255 - 200 * t, 255 - 210 * t] : [255 + 200 * t, 255 + 140 * t, 255];
  const h = (x: number) => Math.round(x).toString(16).padStart(2, '0');
  return `#${h(r)}${h(g)}${h(b)}`;
}

/** Cosine-similarity heatmap of the label text embeddings, values printed in the cells. */
export function heatmap(
  labels: readonly string[],
  matrix: readonly (readonly number[])[],
  title = 'Cosine similarity of label text embeddings',
): string {
  const L = labels.length;
  const cell = L <= 16 ? 34 : Math.max(12, Math.floor(540 / L));
  const m = { l: labelMargin(labels), t: 50, b: Math.min(MAX_LABEL, Math.max(...labels.map((l) => l.length))) * 5.2 + 30, r: 70 };
  const W = m.l + cell * L + m.r,
    H = m.t + cell * L + m.b;
  let out = svgOpen('heatmap', W, H, title);
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) {
      const v = matrix[i]![j]!;
      const x = m.l + j * cell,
        y = m.t + i * cell;
      out += `<rect class="cell" x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${divergingColor(v)}" stroke="#fff" stroke-width="0.5">`;
      out += `<title>${esc(`${labels[i]} \u00b7 ${labels[j]}: ${v.toFixed(3)}`)}</title></rect>`;
      if (cell >= 28)
        out += `<text x="${x + cell / 2}" y="${y + cell / 2 + 3.5}" text-anchor="middle" font-size="9.5" fill="${Math.abs(v) > 0.6 ? '#fff' : '#333'}">${v.toFixed(2)}</text>`;
    }
    out += `<text x="${m.l - 6}" y="${m.t + i * cell + cell / 2 + 4}" text-anchor="end" fill="#222">${esc(clip(labels[i]!))}<title>${esc(labels[i])}</title></text>`;
    const cx = m.l + i * cell + cell / 2,
      cy = m.t + L * cell + 6;
    out += `<text transform="translate(${cx + 4} ${cy}) rotate(-55)" text-anchor="end" fill="#222">${esc(clip(labels[i]!))}</text>`;
  }
  // Colour scale.
  const sx = m.l + L * cell + 18,
    sh = Math.min(200, L * cell);
  for (let k = 0; k < 40; k++) {
    const v = 1 - (2 * k) / 39;
    out += `<rect x="${sx}" y="${n2(m.t + (k * sh) / 40)}" width="12" height="${n2(sh / 40 + 0.5)}" fill="${divergingColor(v)}"/>`;
  }
  for (const [v, y] of [
    [1, m.t],
    [0, m.t + sh / 2],
    [-1, m.t + sh],
  ] as const)
    out += `<text x="${sx + 16}" y="${n2(y + 4)}" fill="#555">${v}</text>`;
  return out + '</svg>';
}

export interface ScatterGroup {
  name: string;
  color: string;
  /** Indices into the points array. */
  members: number[];
}

/** 2-D scatter of projected embeddings, one colour per group, legend with counts on the right. */
export function scatter(
  points: readonly [number, number][],
  groups: readonly ScatterGroup[],
  title: string,
  axes: [string, string],
): string {
  const m = { l: 40, r: Math.min(MAX_LABEL, Math.max(10, ...groups.map((g) => g.name.length + 6))) * 6.2 + 40, t: 40, b: 40 };
  const W = 560 + m.r,
    H = Math.max(520, m.t + 20 + groups.length * 17);
  const pw = W - m.l - m.r,
    ph = H - m.t - m.b;
  let out = svgOpen('projection', W, H, title);
  if (points.length === 0) return out + emptyNote(W / 2, H / 2, 'no test embeddings') + '</svg>';
  const xs = points.map((p) => p[0]),
    ys = points.map((p) => p[1]);
  let x0 = Math.min(...xs),
    x1 = Math.max(...xs),
    y0 = Math.min(...ys),
    y1 = Math.max(...ys);
  const padX = (x1 - x0 || 1) * 0.04,
    padY = (y1 - y0 || 1) * 0.04;
  x0 -= padX;
  x1 += padX;
  y0 -= padY;
  y1 += padY;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.t + ph - ((y - y0) / (y1 - y0)) * ph;
  out += `<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#ccc"/>`;
  out += `<text x="${m.l + pw / 2}" y="${H - 14}" text-anchor="middle" fill="#444">${esc(axes[0])}</text>`;
  out += `<text transform="translate(${m.l - 12} ${m.t + ph / 2}) rotate(-90)" text-anchor="middle" fill="#444">${esc(axes[1])}</text>`;
  groups.forEach((g, gi) => {
    out += `<g class="group" data-group="${gi}" data-name="${esc(g.name)}" fill="${g.color}" fill-opacity="0.75"><title>${esc(`${g.name} (${g.members.length})`)}</title>`;
    for (const i of g.members) out += `<circle cx="${n2(sx(points[i]![0]))}" cy="${n2(sy(points[i]![1]))}" r="3"/>`;
    out += '</g>';
    const ly = m.t + 8 + gi * 17;
    out += `<g class="legend" data-group="${gi}"><circle cx="${W - m.r + 18}" cy="${ly}" r="5" fill="${g.color}"/>`;
    out += `<text x="${W - m.r + 28}" y="${ly + 4}" fill="#222">${esc(clip(g.name))} (${g.members.length})</text></g>`;
  });
  return out + '</svg>';
}
