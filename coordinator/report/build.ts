import { compareEvalsMany, fmtPoints, type ComparisonRow } from './compare.js';
import { captureEnvironment } from './environment.js';
import { cosineMatrix, downsampleMinMax, ema, pca2 } from './math.js';
import { lossKeys, timeKeys, type RunData } from './run-dir.js';
import { NEUTRAL, PALETTE, aurocChart, diffsChart, esc, heatmap, lineChart, scatter, type ScatterGroup, type Series } from './svg.js';

/**
 * Assemble the run report: one self-contained HTML page (inline SVG, CSS and a few lines of
 * script, a Content-Security-Policy that forbids any network fetch) plus each chart as its own
 * SVG document.
 */

export interface Chart {
  /** File-name part: the chart is saved as `report-<name>.svg`. */
  name: string;
  title: string;
  svg: string;
  /** Section of the page it belongs to. */
  section: 'training' | 'evaluation' | 'embeddings';
}

export interface BuiltReport {
  html: string;
  charts: Chart[];
}

/** Runs' colours: the palette without its red and green, which mean loss and gain in the differences. */
const RUN_COLORS = PALETTE.filter((c) => c !== '#e15759' && c !== '#59a14f');
/** A run's colour in every chart of the report: the baseline first, then the compared runs. */
const runColor = (i: number) => RUN_COLORS[i % RUN_COLORS.length]!;
/** Curves are downsampled to this many buckets (x3 points at most) so long runs stay light. */
const CURVE_BUCKETS = 600;

function curve(run: RunData, key: string): [number, number][] {
  const xs = run.metrics.map((m) => m.step);
  const ys = run.metrics.map((m) => (typeof m[key] === 'number' ? (m[key] as number) : null));
  return downsampleMinMax(xs, ys, CURVE_BUCKETS);
}

function smoothed(run: RunData, key: string): [number, number][] {
  const xs = run.metrics.map((m) => m.step);
  const ys = ema(
    run.metrics.map((m) => (typeof m[key] === 'number' ? (m[key] as number) : null)),
    0.9,
  );
  return downsampleMinMax(xs, ys, CURVE_BUCKETS);
}

const TERM_TITLES: Record<string, string> = {
  loss: 'Total loss',
  loss_contrastive: 'Contrastive loss',
  loss_classification: 'Classification loss',
  loss_label_prior: 'Label-prior loss',
};
const termTitle = (k: string) => TERM_TITLES[k] ?? `Loss term ${k.replace(/^loss_/, '')}`;

function trainingCharts(runs: RunData[]): Chart[] {
  const charts: Chart[] = [];
  const keys = [...new Set(runs.flatMap((r) => lossKeys(r.metrics)))];
  const multi = runs.length > 1;
  for (const key of keys) {
    const series: Series[] = [];
    runs.forEach((r, i) => {
      const color = runColor(i);
      series.push({ name: `${r.name} (raw)`, points: curve(r, key), color, faint: true, noLegend: true });
      series.push({ name: multi ? r.name : 'EMA 0.9', points: smoothed(r, key), color });
    });
    charts.push({
      name: key.replace(/_/g, '-'),
      title: termTitle(key),
      section: 'training',
      svg: lineChart({ kind: 'loss', title: termTitle(key), xLabel: 'step', series }),
    });
  }
  const simple = (name: string, key: string, title: string, yLabel: string) => {
    const series = runs.map((r, i) => ({ name: r.name, points: curve(r, key), color: runColor(i), noLegend: !multi }));
    if (series.every((s) => s.points.length === 0)) return;
    charts.push({ name, title, section: 'training', svg: lineChart({ kind: name, title, xLabel: 'step', yLabel, series }) });
  };
  simple('lr', 'lr', 'Learning rate', 'lr');
  simple('throughput', 'images_per_s', 'Throughput', 'images / s');
  // Step-time split of the first run: where each step's time goes.
  const main = runs[0]!;
  const tkeys = timeKeys(main.metrics);
  if (tkeys.length) {
    const series = tkeys.map((k, i) => ({
      name: k.replace(/^time_|_s$/g, '').replace(/_/g, ' '),
      points: curve(main, k),
      color: PALETTE[i % PALETTE.length]!,
    }));
    charts.push({
      name: 'step-time',
      title: `Step time split (${main.name})`,
      section: 'training',
      svg: lineChart({ kind: 'step-time', title: `Step time split (${main.name})`, xLabel: 'step', yLabel: 'seconds', series }),
    });
  }
  return charts;
}

/** Projection groups: each test image takes the colour of its rarest positive finding. */
export function projectionGroups(labels: readonly string[], rows: readonly (readonly (number | null)[])[]): ScatterGroup[] {
  const positives = labels.map((_, j) => rows.reduce((s, r) => s + (r[j] === 1 ? 1 : 0), 0));
  const findings = labels.map((l, j) => ({ l, j })).filter(({ l }) => l.toLowerCase().replace(/[_\s]/g, '') !== 'nofinding');
  const members = new Map<number, number[]>();
  const none: number[] = [];
  rows.forEach((r, i) => {
    let best = -1;
    for (const { j } of findings) if (r[j] === 1 && (best < 0 || positives[j]! < positives[best]!)) best = j;
    if (best < 0) none.push(i);
    else members.set(best, [...(members.get(best) ?? []), i]);
  });
  const groups: ScatterGroup[] = [{ name: 'No finding', color: NEUTRAL, members: none }];
  findings.forEach(({ l, j }, k) => {
    const m = members.get(j);
    if (m?.length) groups.push({ name: l, color: PALETTE[k % PALETTE.length]!, members: m });
  });
  return groups;
}

function embeddingCharts(run: RunData): Chart[] {
  const e = run.embeddings;
  if (!e) return [];
  const charts: Chart[] = [
    {
      name: 'heatmap',
      title: 'Label embedding similarity',
      section: 'embeddings',
      svg: heatmap(e.labels, cosineMatrix(e.labelEmbeddings)),
    },
  ];
  if (e.test && e.test.embeddings.length > 0) {
    const proj = pca2(e.test.embeddings);
    const groups = projectionGroups(e.labels, e.test.labels);
    const shown = e.test.embeddings.length < e.test.total ? `${e.test.embeddings.length} of ${e.test.total}` : `${e.test.total}`;
    const title = `Test image embeddings, PCA (${shown} images)`;
    const pct = (x: number) => `${(x * 100).toFixed(1)}% of variance`;
    charts.push({
      name: 'projection',
      title,
      section: 'embeddings',
      svg: scatter(proj.points, groups, title, [`PC 1 (${pct(proj.explained[0])})`, `PC 2 (${pct(proj.explained[1])})`]),
    });
  }
  return charts;
}

const fmt4 = (x: number | null | undefined) => (typeof x === 'number' ? x.toFixed(4) : '\u2013');

function aurocTable(run: RunData): string {
  const ev = run.evaluation!;
  let rows = '';
  for (const [label, v] of Object.entries(ev.auroc)) {
    const ci = ev.ci?.[label];
    rows += `<tr><td>${esc(label)}</td><td class="num">${fmt4(v)}</td><td class="num">${ci ? `${ci[0].toFixed(4)} \u2013 ${ci[1].toFixed(4)}` : '\u2013'}</td></tr>`;
  }
  const fmtCi = (ci: [number, number] | null | undefined) => (ci ? `${ci[0].toFixed(4)} \u2013 ${ci[1].toFixed(4)}` : '');
  rows += `<tr class="summary"><td>Mean</td><td class="num">${fmt4(ev.mean_auroc)}</td><td class="num">${fmtCi(ev.mean_auroc_ci)}</td></tr>`;
  rows += `<tr class="summary"><td>Competition mean</td><td class="num">${fmt4(ev.mean_auroc_competition)}</td><td class="num">${fmtCi(ev.mean_auroc_competition_ci)}</td></tr>`;
  return `<table class="data"><thead><tr><th>label</th><th>AUROC</th><th>95% CI</th></tr></thead><tbody>${rows}</tbody></table>`;
}

/** The baseline's AUROC, then each run's AUROC and its difference from the baseline. */
function comparisonTable(base: string, runs: readonly { name: string; rows: readonly ComparisonRow[] }[]): string {
  let body = '';
  runs[0]!.rows.forEach((r0, i) => {
    body += `<tr class="${r0.summary ? 'summary' : ''}"><td>${esc(r0.label)}</td><td class="num">${fmt4(r0.a)}</td>`;
    for (const run of runs) {
      const r = run.rows[i]!;
      body += `<td class="num">${fmt4(r.b)}</td><td class="num diff ${r.verdict === 'n/a' ? 'na' : r.verdict}">${esc(fmtPoints(r.diffPoints))}</td>`;
    }
    body += '</tr>';
  });
  const head = runs.map((run) => `<th>${esc(run.name)}</th><th>diff (points)</th>`).join('');
  return `<table class="data compare"><thead><tr><th>label</th><th>${esc(base)}</th>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

/** What a zero-shot evaluation scored with, said once under the AUROC chart. */
function zeroShotNote(r: RunData): string {
  const zs = r.evaluation?.zero_shot;
  if (!zs) return '';
  const from =
    zs.prompts === 'tower'
      ? `the pretrained towers as imported from ${esc(zs.weights ?? zs.from)}`
      : `the prompt embeddings of ${esc(zs.from)} through its heads`;
  return `<p class="note zero-shot">${esc(r.name)}: each label scored by the softmax over its Positive/Negative prompt similarities (scale ${zs.logit_scale.toFixed(2)}), ${from}; no classifier trained.</p>`;
}

function kvTable(obj: Record<string, unknown>): string {
  let rows = '';
  for (const [k, v] of Object.entries(obj)) {
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    rows += `<tr><th>${esc(k)}</th><td>${esc(text)}</td></tr>`;
  }
  return `<table class="kv">${rows}</table>`;
}

function figure(c: Chart): string {
  return `<figure class="chart-figure" data-chart="${esc(c.name)}">${c.svg}<figcaption><a download="report-${esc(c.name)}.svg" href="report-${esc(c.name)}.svg">report-${esc(c.name)}.svg</a></figcaption></figure>`;
}

const CSS = `
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6eb;--bg:#f5f6f8;--gain:#1a9641;--loss:#d7191c}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
header{background:#1d2330;color:#fff;padding:22px 32px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .sub{color:#b9c0cc;font-size:13px}
main{max-width:1320px;margin:0 auto;padding:20px 32px 48px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:18px 20px;margin:0 0 20px}
h2{font-size:17px;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:0 0 20px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:150px}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:20px;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;overflow:hidden;background:#fff}
figure svg{display:block;max-width:100%;height:auto}
figcaption{font-size:11px;padding:3px 8px;border-top:1px solid var(--line);color:var(--muted)}
figcaption a{color:var(--muted)}
.row{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
table.data{border-collapse:collapse;font-size:13px}
table.data th,table.data td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
table.data tr.summary td{font-weight:600;border-top:2px solid #c9ced6}
td.diff.gain{color:var(--gain);font-weight:600}td.diff.loss{color:var(--loss);font-weight:600}td.diff.same,td.diff.na{color:var(--muted)}
table.kv{border-collapse:collapse;font-size:12.5px}
table.kv th{text-align:left;color:var(--muted);font-weight:500;padding:2px 14px 2px 0;vertical-align:top;white-space:nowrap}
table.kv td{padding:2px 0;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
pre{background:#f7f8fa;border:1px solid var(--line);border-radius:6px;padding:10px;font-size:12px;overflow:auto;max-height:520px}
.note{color:var(--muted);font-size:12.5px}
.notes li{color:#8a5a00}
label.pick{font-size:13px;color:var(--muted)}
`;

// Highlight one finding in the projection: the others fade. No network, no globals leaked.
const SCRIPT = `
(function(){
  var sel=document.getElementById('projection-pick');
  if(!sel)return;
  sel.addEventListener('change',function(){
    var v=sel.value;
    document.querySelectorAll('svg[data-chart="projection"] g.group').forEach(function(g){
      g.setAttribute('fill-opacity', v===''||g.getAttribute('data-group')===v ? '0.75' : '0.06');
    });
  });
})();
`;

/** The report of `run`; with `compare`, one run or several, each is drawn beside it and against it. */
export function buildReport(run: RunData, compare: RunData | readonly RunData[] = []): BuiltReport {
  const others: readonly RunData[] = 'dir' in compare ? [compare] : compare;
  const runs = [run, ...others];
  const charts: Chart[] = [...trainingCharts(runs)];
  let evalHtml = '';
  if (runs.some((r) => r.evaluation)) {
    const labels: string[] = [];
    for (const r of runs) for (const l of Object.keys(r.evaluation?.auroc ?? {})) if (!labels.includes(l)) labels.push(l);
    const aurocRuns = runs
      .filter((r) => r.evaluation)
      .map((r) => ({
        name: r.name,
        auroc: r.evaluation!.auroc,
        ...(r.evaluation!.ci ? { ci: r.evaluation!.ci } : {}),
        color: runColor(runs.indexOf(r)),
        means: [
          { label: 'Mean', value: r.evaluation!.mean_auroc, ci: r.evaluation!.mean_auroc_ci ?? null },
          { label: 'Competition mean', value: r.evaluation!.mean_auroc_competition, ci: r.evaluation!.mean_auroc_competition_ci ?? null },
        ],
      }));
    const auroc: Chart = { name: 'auroc', title: 'Per-label AUROC', section: 'evaluation', svg: aurocChart(labels, aurocRuns) };
    charts.push(auroc);
    evalHtml += `<section id="evaluation"><h2>Evaluation: per-label AUROC</h2>`;
    if (run.evaluation)
      evalHtml += `<p class="note">${esc(run.name)}: split <b>${esc(run.evaluation.split)}</b>, ${run.evaluation.n} images. Whiskers are the 95% confidence intervals from eval.json.</p>`;
    for (const r of runs) evalHtml += zeroShotNote(r);
    evalHtml += `<div class="row">${figure(auroc)}${run.evaluation ? aurocTable(run) : ''}</div></section>`;
    const compared = run.evaluation ? others.filter((r) => r.evaluation) : [];
    const unevaluated = (run.evaluation ? others : [run]).filter((r) => !r.evaluation).map((r) => r.name);
    if (compared.length) {
      const rows = compareEvalsMany(
        run.evaluation!,
        compared.map((r) => r.evaluation!),
      );
      const diffRuns = compared.map((r, k) => ({ name: r.name, color: runColor(runs.indexOf(r)), rows: rows[k]! }));
      const diff: Chart = { name: 'compare', title: 'AUROC difference', section: 'evaluation', svg: diffsChart(run.name, diffRuns) };
      charts.push(diff);
      evalHtml += `<section id="comparison"><h2>Comparison: ${esc(compared.map((r) => r.name).join(', '))} vs ${esc(run.name)}</h2>`;
      evalHtml += `<p class="note">Differences from ${esc(run.name)} in AUROC points (AUROC \u00d7 100). Beyond \u00b10.5 points: <span style="color:var(--gain);font-weight:600">green = gain</span>, <span style="color:var(--loss);font-weight:600">red = loss</span>.`;
      if (unevaluated.length) evalHtml += ` Not compared (no eval.json): ${esc(unevaluated.join(', '))}.`;
      evalHtml += `</p><div class="row">${figure(diff)}${comparisonTable(run.name, diffRuns)}</div></section>`;
    } else if (others.length) {
      evalHtml += `<section id="comparison"><h2>Comparison</h2><p class="note">No comparison: ${esc(unevaluated.join(', '))} ${unevaluated.length > 1 ? 'have' : 'has'} no eval.json.</p></section>`;
    }
  }
  const embCharts = embeddingCharts(run);
  charts.push(...embCharts);

  const last = run.metrics[run.metrics.length - 1];
  const card = (k: string, v: string) => `<div class="card"><div class="k">${esc(k)}</div><div class="v">${esc(v)}</div></div>`;
  let cards = '';
  if (last) {
    cards += card('steps', String(last.step));
    cards += card('epoch', String(Math.round(last.epoch * 100) / 100));
    if (typeof last.loss === 'number') cards += card('final loss', last.loss.toFixed(4));
    const ips = run.metrics.map((m) => m.images_per_s).sort((a, b) => a - b);
    cards += card('images/s (median)', ips[Math.floor(ips.length / 2)]!.toFixed(1));
  }
  if (run.evaluation) {
    cards += card('mean AUROC', fmt4(run.evaluation.mean_auroc));
    cards += card('competition mean AUROC', fmt4(run.evaluation.mean_auroc_competition));
  }

  const env = run.environment ?? captureEnvironment();
  const backend = (run.environment?.backend ?? run.config?.backend ?? null) as unknown;
  const envNote = run.environment
    ? `From ${esc(run.name)}/environment.json, written when the run started.`
    : `This run has no environment.json; shown is the machine that rendered this report.${backend ? '' : ' Backend unknown.'}`;
  const envShown = run.environment ? env : { ...env, ...(backend ? { backend } : {}) };

  const trainingFigs = charts
    .filter((c) => c.section === 'training')
    .map(figure)
    .join('');
  const notes = runs.flatMap((r) => r.notes);
  let projectionPicker = '';
  const projection = embCharts.find((c) => c.name === 'projection');
  if (projection && run.embeddings?.test) {
    const groups = projectionGroups(run.embeddings.labels, run.embeddings.test.labels);
    projectionPicker =
      `<label class="pick">Highlight <select id="projection-pick"><option value="">all findings</option>` +
      groups.map((g, i) => `<option value="${i}">${esc(g.name)}</option>`).join('') +
      `</select></label><p class="note">Each image takes the colour of its rarest positive finding; images with none are \u201cNo finding\u201d.</p>`;
  }

  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cxr-align report: ${esc(run.name)}${others.length ? ` vs ${esc(others.map((r) => r.name).join(', '))}` : ''}</title>
<style>${CSS}</style></head>
<body>
<header><h1>cxr-align run report: ${esc(run.name)}${others.length ? ` <span style="font-weight:400">vs</span> ${esc(others.map((r) => r.name).join(', '))}` : ''}</h1>
<div class="sub">${esc(run.dir)}${others.length ? ` \u00b7 compared with ${esc(others.map((r) => r.dir).join(', '))}` : ''} \u00b7 generated ${esc(new Date().toISOString())}</div></header>
<main>
<div class="cards">${cards}</div>
${notes.length ? `<section><h2>Notes</h2><ul class="notes">${notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul></section>` : ''}
<section id="training"><h2>Training</h2>${trainingFigs ? `<div class="grid">${trainingFigs}</div>` : `<p class="note">No metrics.jsonl in this run.</p>`}</section>
${evalHtml || `<section id="evaluation"><h2>Evaluation</h2><p class="note">No eval.json in this run.</p></section>`}
<section id="embeddings"><h2>Embeddings</h2>${embCharts.length ? `${projectionPicker}<div class="grid">${embCharts.map(figure).join('')}</div>` : `<p class="note">No embeddings.json in this run (the trainer writes it at the end of a run).</p>`}</section>
<section id="environment"><h2>Environment</h2><p class="note">${envNote}</p>${kvTable(envShown)}</section>
<section id="configuration"><h2>Configuration</h2>${run.config ? `<pre>${esc(JSON.stringify(run.config, null, 2))}</pre>` : `<p class="note">No config.json in this run.</p>`}</section>
</main>
<script>${SCRIPT}</script>
</body></html>
`;
  return { html, charts };
}
