import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { compareEvals, compareEvalsMany, fmtPoints, formatComparisonTable, verdictOf } from '../../coordinator/report/compare.js';
import { buildReport } from '../../coordinator/report/build.js';
import { readRunDir } from '../../coordinator/report/run-dir.js';
import { writeReport } from '../../coordinator/report/write.js';
import { GAIN, LOSS, NEUTRAL } from '../../coordinator/report/svg.js';
import { writeFixtureRun } from '../fixtures/run-dir.js';

const ev = (auroc: Record<string, number | null>, mean: number | null, comp: number | null) => ({
  split: 'test',
  n: 100,
  auroc,
  mean_auroc: mean,
  mean_auroc_competition: comp,
});

test('verdicts: beyond 0.5 AUROC points is a gain or a loss, exactly 0.5 is not; a shown zero has no sign', () => {
  assert.equal(verdictOf(0.51), 'gain');
  assert.equal(verdictOf(0.5), 'same');
  assert.equal(verdictOf(-0.51), 'loss');
  assert.equal(verdictOf(null), 'n/a');
  // The sign is the shown value's: a difference that rounds to zero has none.
  assert.deepEqual([-0.003, 0.004, -0.005001, 1.236, null].map(fmtPoints), ['\u00b10.00', '\u00b10.00', '\u22120.01', '+1.24', '-']);
});

test('comparison rows cover both runs, in points, with the mean rows last', () => {
  const rows = compareEvals(ev({ A: 0.8, B: 0.9, C: null }, 0.85, 0.8), ev({ A: 0.81, B: 0.895, D: 0.7 }, 0.86, 0.8));
  assert.deepEqual(
    rows.map((r) => r.label),
    ['A', 'B', 'C', 'D', 'Mean', 'Competition mean'],
  );
  assert.ok(Math.abs(rows[0]!.diffPoints! - 1) < 1e-9);
  assert.deepEqual(
    rows.map((r) => r.verdict),
    ['gain', 'same', 'n/a', 'n/a', 'gain', 'same'],
  );
  const plain = formatComparisonTable(rows, { nameA: 'base', nameB: 'text', color: false });
  assert.ok(!plain.includes('\x1b['));
  assert.match(plain, /^A\s+0\.8000\s+0\.8100\s+\+1\.00 {2}gain$/m);
  assert.match(plain, /^B\s+0\.9000\s+0\.8950\s+\u22120\.50$/m);
  assert.match(plain, /^Mean\s+0\.8500\s+0\.8600\s+\+1\.00 {2}gain$/m);
  const colored = formatComparisonTable(rows, { nameA: 'base', nameB: 'text', color: true });
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the ANSI colour escape is what is asserted
  assert.match(colored, /\x1b\[32mA\s+0\.8000/);
});

test("several runs against one baseline: the row lists line up over every run's labels", () => {
  const base = ev({ A: 0.8, B: 0.9 }, 0.85, 0.8);
  const [r1, r2] = compareEvalsMany(base, [ev({ A: 0.7, C: 0.6 }, 0.75, 0.8), ev({ B: 0.95, D: 0.5 }, 0.9, null)]);
  for (const rows of [r1!, r2!])
    assert.deepEqual(
      rows.map((r) => r.label),
      ['A', 'B', 'C', 'D', 'Mean', 'Competition mean'],
    );
  assert.deepEqual(
    r1!.map((r) => r.verdict),
    ['loss', 'n/a', 'n/a', 'n/a', 'loss', 'same'],
  );
  assert.deepEqual(
    r2!.map((r) => r.verdict),
    ['n/a', 'gain', 'n/a', 'n/a', 'gain', 'n/a'],
  );
  assert.ok(Math.abs(r2![1]!.diffPoints! - 5) < 1e-9);
  // Two runs: the same rows as the pairwise comparison.
  assert.deepEqual(compareEvalsMany(base, [ev({ A: 0.7, C: 0.6 }, 0.75, 0.8)])[0], compareEvals(base, ev({ A: 0.7, C: 0.6 }, 0.75, 0.8)));
});

test('a four-run report: every run in the AUROC chart, each run against the baseline, coloured by verdict', async () => {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-multi-'));
  try {
    const names = ['names', 'states', 'all', 'visual-only'];
    const dirs = names.map((n) => path.join(tmp, n));
    for (const [i, d] of dirs.entries())
      await writeFixtureRun(d, { seed: i + 1, quality: 0.3 + 0.1 * i, steps: 20, testImages: 120, dim: 8 });
    const runs = await Promise.all(dirs.map((d) => readRunDir(d)));
    const { html, charts } = buildReport(runs[0]!, runs.slice(1));
    const svg = (name: string) => charts.find((c) => c.name === name)!.svg;

    // AUROC: one mark per run and label with a value, four colours.
    const labels = Object.keys(runs[0]!.evaluation!.auroc);
    const marks = [...svg('auroc').matchAll(/<g class="mark" data-label="[^"]*" data-run="([^"]*)"/g)].map((m) => m[1]);
    for (const n of names) assert.ok(marks.filter((r) => r === n).length >= labels.length - 2, `AUROC marks of ${n}`);
    assert.equal(
      new Set([...svg('auroc').matchAll(/<circle cx="[\d.]+" cy="[\d.]+" r="4" fill="(#[0-9a-f]{6})"/g)].map((m) => m[1])).size,
      4,
    );

    // The means after the labels, each run's with its bootstrap CI whisker (eval.json mean_auroc_ci).
    for (const n of names)
      for (const mean of ['Mean', 'Competition mean'])
        assert.match(
          svg('auroc'),
          new RegExp(
            `<g class="mark" data-label="${mean}" data-run="${n}"><title>${n} \u2014 ${mean}: 0\\.\\d{4} \\[0\\.\\d{4}, 0\\.\\d{4}\\]</title><line`,
          ),
        );
    assert.match(
      html,
      /<tr class="summary"><td>Mean<\/td><td class="num">0\.\d{4}<\/td><td class="num">0\.\d{4} \u2013 0\.\d{4}<\/td><\/tr>/,
    );

    // Differences: one bar per compared run and label (+ the two means), its colour by verdict.
    const diff = svg('compare');
    assert.match(diff, /AUROC difference from names \(points\)/);
    const bars = [
      ...diff.matchAll(/<rect class="bar (gain|loss|same)" data-label="([^"]*)" data-run="([^"]*)"[^>]*fill="(#[0-9a-f]{6})"/g),
    ];
    const rows = compareEvalsMany(
      runs[0]!.evaluation!,
      runs.slice(1).map((r) => r.evaluation!),
    );
    for (const [k, n] of names.slice(1).entries()) {
      const mine = bars.filter((b) => b[3] === n);
      assert.equal(mine.length, rows[k]!.filter((r) => r.diffPoints !== null).length, `bars of ${n}`);
      for (const b of mine) {
        const row = rows[k]!.find((r) => r.label === b[2])!;
        assert.equal(b[1], row.verdict);
        assert.equal(b[4], { gain: GAIN, loss: LOSS, same: NEUTRAL }[b[1] as 'gain' | 'loss' | 'same']);
      }
      assert.match(diff, new RegExp(`<text x="[\\d.]+" y="34" fill="#333">${n}</text>`), `legend names ${n}`);
    }
    assert.ok(
      bars.some((b) => b[1] !== 'same'),
      'the fixture runs differ by more than 0.5 points somewhere',
    );

    // The table: the baseline, then each run's AUROC and difference.
    assert.match(
      html,
      /<th>label<\/th><th>names<\/th><th>states<\/th><th>diff \(points\)<\/th><th>all<\/th><th>diff \(points\)<\/th><th>visual-only<\/th>/,
    );
    assert.match(html, /<title>cxr-align report: names vs states, all, visual-only<\/title>/);
    // Loss curves: one colour per run.
    const loss = charts.find((c) => c.name === 'loss')!.svg;
    assert.equal(new Set([...loss.matchAll(/stroke="(#[0-9a-f]{6})" stroke-width="1.8"/g)].map((m) => m[1])).size, 4);

    // A compared run without eval.json is named, the others still compared.
    await fsp.rm(path.join(dirs[2]!, 'eval.json'));
    const partial = buildReport(await readRunDir(dirs[0]!), await Promise.all(dirs.slice(1).map((d) => readRunDir(d))));
    assert.match(partial.html, /Not compared \(no eval\.json\): all\./);
    assert.ok(!partial.charts.find((c) => c.name === 'compare')!.svg.includes('data-run="all"'));
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test('the HTML escapes every text that comes from the run files', async () => {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-html-'));
  try {
    const evil = `<img src=x onerror=alert(1)> & "q" 'a'`;
    const a = path.join(tmp, 'a<b>'),
      b = path.join(tmp, 'b');
    await writeFixtureRun(a, { steps: 20, testImages: 80, dim: 8, extraLabels: [evil] });
    await writeFixtureRun(b, { steps: 20, testImages: 80, dim: 8, seed: 3 });
    const { html, charts } = buildReport(await readRunDir(a), await readRunDir(b));
    assert.ok(!html.includes('<img'), 'raw tag from a label reached the page');
    assert.ok(!html.includes('a<b>'));
    assert.ok(html.includes('&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot; &#39;a&#39;'));
    // Every chart SVG is balanced XML (a stray '<' or '&' would break the standalone files).
    for (const c of charts) {
      assert.ok(!/&(?!amp;|lt;|gt;|quot;|#39;)/.test(c.svg), `${c.name}: unescaped &`);
      const stack: string[] = [];
      for (const m of c.svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
        if (m[3]) continue;
        if (m[1]) assert.equal(stack.pop(), m[2], `${c.name}: </${m[2]}> closes the wrong element`);
        else stack.push(m[2]!);
      }
      assert.deepEqual(stack, [], `${c.name}: unclosed elements`);
    }
    // Missing optional files: the report still renders and says what is missing.
    await fsp.rm(path.join(b, 'embeddings.json'));
    await fsp.rm(path.join(b, 'environment.json'));
    const written = await writeReport(b, { out: path.join(tmp, 'b.html') });
    const page = await fsp.readFile(written.html, 'utf8');
    assert.match(page, /No embeddings\.json in this run/);
    assert.match(page, /shown is the machine that rendered this report/);
    assert.ok(written.svgs.every((f) => path.dirname(f) === tmp));
    await assert.rejects(writeReport(b, { out: path.join(tmp, 'no', 'r.html') }), /does not exist/);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});
