import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UserError } from '../../shared/util/errors.js';
import { parseEval, parseMetricsJsonl, readRunDir, lossKeys, timeKeys } from '../../coordinator/report/run-dir.js';
import { buildRunEmbeddings, capRows, readRunEmbeddings, writeRunEmbeddings } from '../../shared/run/embeddings.js';
import { writeFixtureRun } from '../fixtures/run-dir.js';

const isUser = (re: RegExp) => (e: unknown) => e instanceof UserError && re.test(e.message);

test('metrics.jsonl: bad lines are named by file and line; a torn last line is skipped with a note', () => {
  const good = '{"step":1,"epoch":0,"lr":0.001,"images_per_s":10,"loss":2.5,"loss_contrastive":2}\n';
  assert.equal(parseMetricsJsonl(good + good, 'm.jsonl').length, 2);
  assert.throws(() => parseMetricsJsonl(good + '{"step":2,\n' + good, 'm.jsonl'), isUser(/^m\.jsonl:2: not valid JSON/));
  assert.throws(
    () => parseMetricsJsonl(good + '{"step":-1,"epoch":0,"lr":0,"images_per_s":1,"loss":1}\n', 'm.jsonl'),
    isUser(/^m\.jsonl:2: 'step'/),
  );
  assert.throws(() => parseMetricsJsonl('{"step":1,"epoch":0,"lr":0,"images_per_s":1}\n', 'm.jsonl'), isUser(/'loss'/));
  const notes: string[] = [];
  const lines = parseMetricsJsonl(good + '{"step":2,"epo', 'm.jsonl', notes);
  assert.equal(lines.length, 1);
  assert.match(notes[0]!, /incomplete last line 2/);
  assert.deepEqual(
    lossKeys(parseMetricsJsonl('{"step":1,"epoch":0,"lr":0,"images_per_s":1,"loss_prior":1,"loss":2,"time_gather_s":1}\n', 'x')),
    ['loss', 'loss_prior'],
  );
  assert.deepEqual(timeKeys(parseMetricsJsonl('{"step":1,"epoch":0,"lr":0,"images_per_s":1,"loss":2,"time_gather_s":1}\n', 'x')), [
    'time_gather_s',
  ]);
});

test('eval.json: out-of-range AUROC, unknown CI labels and inverted CIs are refused', () => {
  const ok = { split: 'test', n: 10, auroc: { A: 0.8, B: null }, mean_auroc: 0.8, mean_auroc_competition: null, ci: { A: [0.7, 0.9] } };
  assert.equal(parseEval(ok, 'e.json').auroc.A, 0.8);
  assert.throws(() => parseEval({ ...ok, auroc: { A: 1.2 } }, 'e.json'), isUser(/^e\.json: .*'auroc\.A'/));
  assert.throws(() => parseEval({ ...ok, ci: { C: [0.1, 0.2] } }, 'e.json'), isUser(/'ci\.C' names a label/));
  assert.throws(() => parseEval({ ...ok, ci: { A: [0.9, 0.7] } }, 'e.json'), isUser(/lower bound/));
});

test('embeddings: flat and nested inputs give the same file; test rows capped evenly; NaN labels become null', async () => {
  const labels = ['A', 'B'];
  const nested = buildRunEmbeddings({
    labels,
    labelEmbeddings: [
      [1, 0, 0],
      [0, 1, 0],
    ],
    testEmbeddings: [
      [1, 2, 3],
      [4, 5, 6],
      [7, 8, 9],
    ],
    testLabels: [
      [1, NaN],
      [0, -1],
      [1, 1],
    ],
  });
  const flat = buildRunEmbeddings({
    labels,
    labelEmbeddings: new Float32Array([1, 0, 0, 0, 1, 0]),
    testEmbeddings: new Float32Array([1, 2, 3, 4, 5, 6, 7, 8, 9]),
    testLabels: new Float32Array([1, NaN, 0, -1, 1, 1]),
  });
  assert.deepEqual(flat, nested);
  assert.deepEqual(nested.test!.labels[0], [1, null]);
  assert.deepEqual(capRows(10, 4), [0, 2, 5, 7]);
  assert.deepEqual(capRows(3, 4), [0, 1, 2]);
  assert.throws(() => buildRunEmbeddings({ labels, labelEmbeddings: [[1, 0]] }), /1 rows, expected 2/);
  assert.throws(
    () =>
      buildRunEmbeddings({
        labels,
        labelEmbeddings: [
          [1, NaN],
          [0, 1],
        ],
      }),
    /non-finite/,
  );

  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-emb-'));
  try {
    await writeRunEmbeddings(dir, {
      labels,
      labelEmbeddings: [
        [0.123456789, 0],
        [0, 1],
      ],
      testEmbeddings: [
        [1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
      ].map((r) => r.slice(0, 2)),
      testLabels: [
        [1, 0],
        [0, 1],
        [1, 1],
      ],
      maxTestRows: 2,
    });
    const back = (await readRunEmbeddings(dir))!;
    assert.equal(back.labelEmbeddings[0]![0], 0.123457);
    assert.equal(back.test!.total, 3);
    assert.equal(back.test!.embeddings.length, 2);
    await fsp.writeFile(
      path.join(dir, 'embeddings.json'),
      JSON.stringify({ format: 'cxr-align/embeddings@1', labels, dim: 2, label_embeddings: [[1, 0]], test: null }),
    );
    await assert.rejects(readRunEmbeddings(dir), isUser(/embeddings\.json: 'label_embeddings' has 1 rows for 2 labels/));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a run directory is read whole; an empty or missing one is a clear error', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-run-'));
  try {
    await assert.rejects(readRunDir(path.join(dir, 'nope')), isUser(/not a run directory/));
    await assert.rejects(readRunDir(dir), isUser(/no config\.json, metrics\.jsonl or eval\.json/));
    await writeFixtureRun(dir, { steps: 30, testImages: 60, dim: 8 });
    const run = await readRunDir(dir);
    assert.equal(run.metrics.length, 30);
    assert.equal(run.evaluation!.n, 60);
    assert.equal(run.embeddings!.labels.length, 14);
    assert.equal(run.environment!.backend, 'wasm');
    await fsp.writeFile(path.join(dir, 'config.json'), '[1]');
    await assert.rejects(readRunDir(dir), isUser(/config\.json: expected a JSON object/));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('an eval file stands for a run: named by its folder, marked zero-shot, compared and reported with --out only', async () => {
  const { writeReport } = await import('../../coordinator/report/write.js');
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-evalfile-'));
  try {
    const zs = { prompts: 'heads', from: '/runs/a', logit_scale: 30 };
    const ev = { split: 'test', n: 10, auroc: { A: 0.7 }, mean_auroc: 0.7, mean_auroc_competition: null };
    await fsp.mkdir(path.join(dir, 'a'));
    await fsp.mkdir(path.join(dir, 'zero-shot-clip'));
    await fsp.writeFile(path.join(dir, 'a', 'zs.json'), JSON.stringify({ ...ev, zero_shot: zs }));
    await fsp.writeFile(path.join(dir, 'a', 'test-eval.json'), JSON.stringify(ev));
    await fsp.writeFile(path.join(dir, 'zero-shot-clip', 'eval.json'), JSON.stringify({ ...ev, zero_shot: zs }));
    const file = await readRunDir(path.join(dir, 'a', 'zs.json'));
    assert.equal(file.name, 'a/zs (zero-shot)');
    assert.equal(file.evalOnly, true);
    assert.equal(file.evaluation!.zero_shot!.prompts, 'heads');
    assert.equal((await readRunDir(path.join(dir, 'a', 'test-eval.json'))).name, 'a/test-eval');
    // A folder's eval.json is the folder; a name that says zero-shot already is not marked twice.
    assert.equal((await readRunDir(path.join(dir, 'zero-shot-clip', 'eval.json'))).name, 'zero-shot-clip');
    assert.equal((await readRunDir(path.join(dir, 'zero-shot-clip'))).name, 'zero-shot-clip');
    await fsp.writeFile(path.join(dir, 'a', 'bad.json'), JSON.stringify({ ...ev, zero_shot: { prompts: 'guess' } }));
    await assert.rejects(
      readRunDir(path.join(dir, 'a', 'bad.json')),
      isUser(/bad\.json: invalid evaluation result at 'zero_shot\.prompts'/),
    );
    await assert.rejects(writeReport(path.join(dir, 'a', 'zs.json')), isUser(/give --out FILE\.html/));
    const out = path.join(dir, 'r.html');
    await writeReport(path.join(dir, 'a', 'test-eval.json'), { compareDir: path.join(dir, 'a', 'zs.json'), out });
    assert.match(await fsp.readFile(out, 'utf8'), /Comparison: a\/zs \(zero-shot\) vs a\/test-eval/);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("environment.json records node, host and this checkout's git commit, plus the run facts given", async () => {
  const { writeRunEnvironment } = await import('../../coordinator/report/environment.js');
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-env-'));
  try {
    const env = await writeRunEnvironment(dir, { backend: 'wasm', workers: 2 });
    const back = JSON.parse(await fsp.readFile(path.join(dir, 'environment.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(back, env);
    assert.equal(back.node, process.version);
    assert.equal(back.host, os.hostname());
    assert.equal(back.backend, 'wasm');
    // In a checkout the commit must be found; an unpacked package has none.
    const { existsSync } = await import('node:fs');
    const { packageRoot } = await import('../../shared/util/paths.js');
    if (existsSync(path.join(packageRoot, '.git'))) assert.match(String(back.git_commit), /^[0-9a-f]{40}$/);
    else assert.equal(back.git_commit, null);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
