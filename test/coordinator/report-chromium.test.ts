import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFixtureRun } from '../fixtures/run-dir.js';
import { writeReport } from '../../coordinator/report/index.js';

/**
 * The report in a real browser (Debian's headless Chromium; `.ci/run` installs it): the page
 * loads with no console message at all (errors, CSP violations from any network fetch, uncaught
 * exceptions: Chromium logs every console message to stderr with --enable-logging), every chart
 * is rendered with content, the projection's highlight control works, and a screenshot is taken.
 */
const CHROMIUM = process.env.CHROMIUM ?? 'chromium';

function chromium(args: string[], userDataDir: string): Promise<{ stdout: string; stderr: string }> {
  const flags = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
    `--user-data-dir=${userDataDir}`,
    '--enable-logging=stderr',
    '--v=0',
    '--hide-scrollbars',
  ];
  return new Promise((resolve, reject) => {
    execFile(CHROMIUM, [...flags, ...args], { timeout: 60_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
        reject(new Error(`'${CHROMIUM}' not found: install it with 'apt-get install -y chromium' (or set CHROMIUM=/path/to/chromium)`));
      } else if (err) reject(new Error(`chromium failed: ${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** Runs in the page after load: what the test asserts on, written into the DOM as base64 JSON. */
const PROBE = `<script>
window.addEventListener('load', function () {
  var charts = Array.prototype.map.call(document.querySelectorAll('svg.chart'), function (svg) {
    var r = svg.getBoundingClientRect(), marks = svg.querySelectorAll('path.series, g.mark, rect.bar, rect.cell, g.group circle');
    var drawn = 0; marks.forEach(function (m) { var b = m.getBBox(); if (b.width > 0 || b.height > 0) drawn++; });
    return { chart: svg.getAttribute('data-chart'), width: r.width, height: r.height, marks: marks.length, drawn: drawn };
  });
  var sel = document.getElementById('projection-pick'), faded = -1;
  if (sel) {
    sel.value = '1'; sel.dispatchEvent(new Event('change'));
    faded = document.querySelectorAll('svg[data-chart="projection"] g.group[fill-opacity="0.06"]').length;
  }
  var out = { charts: charts, faded: faded, groups: document.querySelectorAll('svg[data-chart="projection"] g.group').length,
    height: document.documentElement.scrollHeight, title: document.title, bold: document.querySelectorAll('main b b, td b').length,
    diffColors: Array.prototype.map.call(document.querySelectorAll('td.diff.gain, td.diff.loss'), function (td) {
      return (td.classList.contains('gain') ? 'gain ' : 'loss ') + getComputedStyle(td).color; }) };
  var p = document.createElement('pre'); p.id = '__probe';
  p.textContent = btoa(unescape(encodeURIComponent(JSON.stringify(out))));
  document.body.appendChild(p);
});
</script>`;

interface Probe {
  charts: { chart: string; width: number; height: number; marks: number; drawn: number }[];
  faded: number;
  groups: number;
  height: number;
  title: string;
  diffColors: string[];
}

function consoleLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /:CONSOLE[:(]/.test(l));
}

test('the report renders in headless Chromium: no console messages, every chart drawn, screenshot taken', async () => {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-report-chromium-'));
  try {
    const a = path.join(tmp, 'visual-only'),
      b = path.join(tmp, 'visual-text'),
      out = path.join(tmp, 'out');
    await writeFixtureRun(a, { seed: 1, quality: 0.42, steps: 300, testImages: 300 });
    await writeFixtureRun(b, { seed: 2, quality: 0.5, steps: 300, testImages: 300, extraLabels: ['<script>alert(1)</script> & "quoted"'] });
    // B's evaluation marked zero-shot (coordinator eval --zero-shot): named so, its prompt source said.
    const bEval = JSON.parse(await fsp.readFile(path.join(b, 'eval.json'), 'utf8'));
    bEval.zero_shot = { prompts: 'tower', from: '/models/clip', weights: '/models/clip/open_clip_pytorch_model.bin', logit_scale: 100 };
    await fsp.writeFile(path.join(b, 'eval.json'), JSON.stringify(bEval));
    await fsp.mkdir(out);
    const written = await writeReport(a, { compareDir: b, out: path.join(out, 'report.html') });
    const html = await fsp.readFile(written.html, 'utf8');

    // A copy with the probe; the screenshot is of the report itself.
    const probed = path.join(out, 'probed.html');
    await fsp.writeFile(probed, html.replace('</body>', `${PROBE}</body>`));
    const dump = await chromium(['--dump-dom', `file://${probed}`], path.join(tmp, 'profile-1'));
    assert.deepEqual(consoleLines(dump.stderr), [], 'the page logged console messages');
    const m = /<pre id="__probe">([A-Za-z0-9+/=]+)<\/pre>/.exec(dump.stdout);
    assert.ok(m, 'the probe did not run (page failed to load?)');
    const probe = JSON.parse(Buffer.from(m[1]!, 'base64').toString('utf8')) as Probe;

    const kinds = probe.charts.map((c) => c.chart).sort();
    assert.deepEqual(
      kinds,
      ['auroc', 'compare', 'heatmap', 'loss', 'loss', 'loss', 'loss', 'lr', 'projection', 'step-time', 'throughput'].sort(),
    );
    assert.equal(probe.charts.length, written.svgs.length, 'one inline chart per exported SVG');
    for (const c of probe.charts) {
      assert.ok(c.width > 200 && c.height > 150, `chart ${c.chart} is rendered ${c.width}x${c.height}`);
      assert.ok(c.marks > 0 && c.drawn === c.marks, `chart ${c.chart}: ${c.drawn} of ${c.marks} marks drawn`);
    }
    assert.ok(probe.groups > 3, 'projection has finding groups');
    assert.equal(probe.faded, probe.groups - 1, 'highlighting one finding fades all the others');
    assert.match(probe.title, /visual-only vs visual-text \(zero-shot\)/);
    assert.match(html, /visual-text \(zero-shot\): each label scored by the softmax over its Positive\/Negative prompt similarities/);
    // Beyond 0.5 points the diff cells are drawn green (gain) or red (loss).
    assert.ok(probe.diffColors.length > 0, 'some difference is over 0.5 points');
    for (const c of probe.diffColors) assert.ok(c === 'gain rgb(26, 150, 65)' || c === 'loss rgb(215, 25, 28)', c);
    assert.ok(!/<script>alert\(1\)/.test(html), 'label text is escaped');

    // The exported SVGs open on their own (as an image document, no console messages either).
    const heat = written.svgs.find((f) => f.endsWith('report-heatmap.svg'))!;
    const svgDump = await chromium(['--dump-dom', `file://${heat}`], path.join(tmp, 'profile-2'));
    assert.deepEqual(consoleLines(svgDump.stderr), []);
    assert.match(svgDump.stdout, /<svg[^>]*data-chart="heatmap"/);

    const png = path.join(out, 'report.png');
    const height = Math.min(16000, Math.max(800, Math.ceil(probe.height)));
    const shot = await chromium(
      [`--window-size=1280,${height}`, `--screenshot=${png}`, `file://${written.html}`],
      path.join(tmp, 'profile-3'),
    );
    assert.deepEqual(consoleLines(shot.stderr), []);
    const bytes = await fsp.readFile(png);
    assert.deepEqual([...bytes.subarray(1, 4)], [...Buffer.from('PNG')], 'screenshot is a PNG');
    assert.equal(bytes.readUInt32BE(16), 1280);
    assert.equal(bytes.readUInt32BE(20), height);
    if (process.env.CXR_TEST_ARTIFACTS) {
      await fsp.mkdir(process.env.CXR_TEST_ARTIFACTS, { recursive: true });
      await fsp.copyFile(png, path.join(process.env.CXR_TEST_ARTIFACTS, 'report.png'));
    }
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test("a four-run comparison renders in headless Chromium: every run's marks drawn, no console messages", async () => {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-report-chromium-4-'));
  try {
    const names = ['names', 'states', 'all', 'visual-only'];
    const dirs = names.map((n) => path.join(tmp, n));
    for (const [i, d] of dirs.entries()) await writeFixtureRun(d, { seed: i + 1, quality: 0.35 + 0.05 * i, steps: 100, testImages: 200 });
    const out = path.join(tmp, 'out');
    await fsp.mkdir(out);
    const written = await writeReport(dirs[0]!, { compareDir: dirs.slice(1), out: path.join(out, 'report.html') });
    const html = await fsp.readFile(written.html, 'utf8');
    const probed = path.join(out, 'probed.html');
    await fsp.writeFile(probed, html.replace('</body>', `${PROBE}</body>`));
    const dump = await chromium(['--dump-dom', `file://${probed}`], path.join(tmp, 'profile-1'));
    assert.deepEqual(consoleLines(dump.stderr), [], 'the page logged console messages');
    const m = /<pre id="__probe">([A-Za-z0-9+/=]+)<\/pre>/.exec(dump.stdout);
    assert.ok(m, 'the probe did not run (page failed to load?)');
    const probe = JSON.parse(Buffer.from(m[1]!, 'base64').toString('utf8')) as Probe;
    for (const c of probe.charts) {
      assert.ok(c.width > 200 && c.height > 150, `chart ${c.chart} is rendered ${c.width}x${c.height}`);
      assert.ok(c.marks > 0 && c.drawn === c.marks, `chart ${c.chart}: ${c.drawn} of ${c.marks} marks drawn`);
    }
    // 14 labels (+2 means in the differences): a mark per run and label, a bar per compared run.
    const marks = (kind: string) => probe.charts.find((c) => c.chart === kind)!.marks;
    assert.ok(marks('auroc') >= 4 * 12, `auroc marks: ${marks('auroc')}`);
    assert.ok(marks('compare') >= 3 * 12, `difference bars: ${marks('compare')}`);
    assert.match(probe.title, /names vs states, all, visual-only/);

    const png = path.join(out, 'report.png');
    const height = Math.min(16000, Math.max(800, Math.ceil(probe.height)));
    const shot = await chromium(
      [`--window-size=1280,${height}`, `--screenshot=${png}`, `file://${written.html}`],
      path.join(tmp, 'profile-2'),
    );
    assert.deepEqual(consoleLines(shot.stderr), []);
    assert.deepEqual([...(await fsp.readFile(png)).subarray(1, 4)], [...Buffer.from('PNG')], 'screenshot is a PNG');
    if (process.env.CXR_TEST_ARTIFACTS) {
      await fsp.mkdir(process.env.CXR_TEST_ARTIFACTS, { recursive: true });
      await fsp.copyFile(png, path.join(process.env.CXR_TEST_ARTIFACTS, 'report-four-runs.png'));
    }
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});
