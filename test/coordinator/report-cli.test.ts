import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { writeFixtureRun } from '../fixtures/run-dir.js';

function coordinator(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [coordinatorEntry, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('coordinator compare and report as real processes', async () => {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-report-cli-'));
  try {
    const a = path.join(tmp, 'visual-only'),
      b = path.join(tmp, 'visual-text');
    await writeFixtureRun(a, { seed: 1, quality: 0.42, steps: 40, testImages: 120, dim: 16 });
    await writeFixtureRun(b, { seed: 2, quality: 0.5, steps: 40, testImages: 120, dim: 16 });

    const cmp = await coordinator(['compare', a, b]);
    assert.equal(cmp.code, 0, cmp.stderr);
    assert.ok(!cmp.stdout.includes('\x1b['), 'no colour when stdout is not a TTY');
    assert.match(cmp.stdout, /^label\s+visual-only\s+visual-text\s+diff \(pts\)/);
    assert.match(cmp.stdout, /^Competition mean\s+0\.\d{4}\s+0\.\d{4}\s+[+\u2212\u00b1]\d+\.\d\d/m);
    const colored = await coordinator(['compare', a, b, '--color']);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the ANSI colour escape is what is asserted
    assert.match(colored.stdout, /\x1b\[3[12]m/);
    const json = JSON.parse((await coordinator(['compare', a, b, '--json'])).stdout) as { label: string }[];
    assert.equal(json.length, 16);

    const rep = await coordinator(['report', a, '--compare', b, '--out', path.join(tmp, 'r.html')]);
    assert.equal(rep.code, 0, rep.stderr);
    const files = (await fsp.readdir(tmp)).sort();
    assert.ok(files.includes('r.html') && files.includes('report-compare.svg') && files.includes('report-auroc.svg'), files.join(' '));
    assert.ok(!files.some((f) => f.includes('.tmp-')), 'no temp files left behind');

    // Several runs against one baseline: one report, every run in its charts.
    const c = path.join(tmp, 'visual-text-states');
    await writeFixtureRun(c, { seed: 3, quality: 0.55, steps: 40, testImages: 120, dim: 16 });
    const multi = await coordinator(['report', a, '--compare', b, '--compare', c, '--out', path.join(tmp, 'multi', 'r.html')]);
    assert.equal(multi.code, 2, 'the --out folder must exist');
    await fsp.mkdir(path.join(tmp, 'multi'));
    const many = await coordinator(['report', a, '--compare', b, '--compare', c, '--out', path.join(tmp, 'multi', 'r.html')]);
    assert.equal(many.code, 0, many.stderr);
    const diff = await fsp.readFile(path.join(tmp, 'multi', 'report-compare.svg'), 'utf8');
    assert.match(diff, /AUROC difference from visual-only/);
    assert.ok(diff.includes('data-run="visual-text"') && diff.includes('data-run="visual-text-states"'));

    await fsp.rm(path.join(b, 'eval.json'));
    const missing = await coordinator(['compare', a, b]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /visual-text\/eval\.json: missing/);
    const bad = await coordinator(['report', path.join(tmp, 'nope')]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /nope: not a run directory/);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});
