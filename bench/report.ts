import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseMetricsJsonl } from '../coordinator/report/run-dir.js';
import { pca2 } from '../coordinator/report/math.js';
import { writeReport } from '../coordinator/report/write.js';
import { writeRunEmbeddings } from '../shared/run/embeddings.js';
import { writeFixtureRun } from '../test/fixtures/run-dir.js';
import { mulberry32 } from '../shared/random/generators.js';

/**
 * `npm run bench -- report [--steps 100000] [--test 2000] [--dim 512]`: how long the end-of-run
 * report takes for a long run. Figures, each next to its reference from the same run:
 * - metrics.jsonl parse + validation vs bare JSON.parse of the same lines;
 * - PCA of the test embeddings vs forming the full dim x dim covariance (the naive route);
 * - the whole writeReport (read, charts, HTML, SVG files) and the HTML size.
 */
export async function run(argv: string[]): Promise<void> {
  const opt = (name: string, dflt: number) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : dflt;
  };
  const steps = opt('steps', 100_000),
    nTest = opt('test', 2000),
    dim = opt('dim', 512);
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-bench-report-'));
  try {
    const dir = path.join(tmp, 'run');
    process.stdout.write(
      `report bench: ${steps} steps, ${nTest} test embeddings of width ${dim} (${os.cpus().length} CPUs, shared machine: timings are noisy)\n`,
    );
    await writeFixtureRun(dir, { steps, testImages: 200, dim: 32 });
    // Full-size embeddings shaped like a trained model's: each image near the sum of its
    // findings' label embeddings, plus noise. (Isotropic noise is the worst case: see below.)
    const rand = mulberry32(9);
    const labels = JSON.parse(await fsp.readFile(path.join(dir, 'embeddings.json'), 'utf8')).labels as string[];
    const L = labels.length;
    const labEmb = Float32Array.from({ length: L * dim }, () => rand() - 0.5);
    const lab = Float32Array.from({ length: nTest * L }, () => (rand() < 0.2 ? 1 : 0));
    const emb = Float32Array.from({ length: nTest * dim }, (_, i) => {
      const r = Math.floor(i / dim),
        k = i % dim;
      let v = (rand() - 0.5) * 0.5;
      for (let j = 0; j < L; j++) if (lab[r * L + j] === 1) v += labEmb[j * dim + k]!;
      return v;
    });
    await writeRunEmbeddings(dir, { labels, labelEmbeddings: labEmb, testEmbeddings: emb, testLabels: lab });

    const text = await fsp.readFile(path.join(dir, 'metrics.jsonl'), 'utf8');
    let t = performance.now();
    const parsed = parseMetricsJsonl(text, 'metrics.jsonl');
    const tParse = performance.now() - t;
    t = performance.now();
    let n = 0;
    for (const line of text.split('\n')) if (line) n += JSON.parse(line).step > 0 ? 1 : 0;
    const tBare = performance.now() - t;
    process.stdout.write(
      `metrics.jsonl (${(text.length / 2 ** 20).toFixed(1)} MiB, ${parsed.length} lines): parse+validate ${tParse.toFixed(0)} ms   reference bare JSON.parse ${tBare.toFixed(0)} ms (${n} lines)\n`,
    );

    const rows = Array.from({ length: nTest }, (_, i) => Array.from(emb.subarray(i * dim, (i + 1) * dim)));
    t = performance.now();
    const proj = pca2(rows);
    const tPca = performance.now() - t;
    t = performance.now();
    const cov = new Float64Array(dim * dim);
    for (const r of rows)
      for (let a = 0; a < dim; a++) {
        const ra = r[a]!;
        for (let b = 0; b < dim; b++) cov[a * dim + b]! += ra * r[b]!;
      }
    const tCov = performance.now() - t;
    const noise = rows.map((r) => r.map(() => rand() - 0.5));
    t = performance.now();
    pca2(noise);
    const tNoise = performance.now() - t;
    process.stdout.write(`PCA ${nTest}x${dim} of isotropic noise (worst case, iteration cap): ${tNoise.toFixed(0)} ms\n`);
    process.stdout.write(
      `PCA ${nTest}x${dim}: ${tPca.toFixed(0)} ms (explained ${(proj.explained[0] * 100).toFixed(2)}% + ${(proj.explained[1] * 100).toFixed(2)}%)   reference forming the ${dim}x${dim} covariance alone ${tCov.toFixed(0)} ms\n`,
    );

    t = performance.now();
    const written = await writeReport(dir, { out: path.join(tmp, 'report.html') });
    const tReport = performance.now() - t;
    const size = (await fsp.stat(written.html)).size;
    process.stdout.write(
      `writeReport: ${tReport.toFixed(0)} ms, report.html ${(size / 1024).toFixed(0)} KiB + ${written.svgs.length} SVG files   reference parse+validate+PCA above ${(tParse + tPca).toFixed(0)} ms\n`,
    );
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
