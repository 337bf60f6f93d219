import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { compareEvals, formatComparisonTable, verdictOf } from '../../coordinator/report/compare.js';
import { buildReport } from '../../coordinator/report/build.js';
import { readRunDir } from '../../coordinator/report/run-dir.js';
import { writeReport } from '../../coordinator/report/write.js';
import { writeFixtureRun } from '../fixtures/run-dir.js';

const ev = (auroc: Record<string, number | null>, mean: number | null, comp: number | null) => ({
  split: 'test',
  n: 100,
  auroc,
  mean_auroc: mean,
  mean_auroc_competition: comp,
});

test('verdicts: beyond 0.5 AUROC points is a gain or a loss, exactly 0.5 is not', () => {
  assert.equal(verdictOf(0.51), 'gain');
  assert.equal(verdictOf(0.5), 'same');
  assert.equal(verdictOf(-0.51), 'loss');
  assert.equal(verdictOf(null), 'n/a');
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
