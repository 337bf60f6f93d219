import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';
import { writeJsonAtomic } from '../util/fs-atomic.js';
import { EMBEDDINGS_FILE } from './files.js';

/**
 * `RUN/embeddings.json`: what the report needs for the label-similarity heatmap and the
 * projection of test images. Written once by the trainer at the end of a run with
 * `writeRunEmbeddings`. Plain JSON so that any tool (Python, jq) reads it; values are rounded to
 * 6 significant digits and the test set is capped (default 2000 rows, evenly spaced, in order),
 * which keeps the file a few MB at most and is far more than a 2-D projection needs.
 *
 * ```json
 * { "format": "cxr-align/embeddings@1",
 *   "labels": ["No Finding", ...],           // label names, column order of the label set
 *   "dim": 128,                               // embedding width
 *   "label_embeddings": [[...dim], ...],      // one row per label (the text branch's output)
 *   "test": { "total": 5000,                  // test rows before capping
 *             "embeddings": [[...dim], ...],  // image embeddings of the kept rows
 *             "labels": [[1, 0, -1, null, ...], ...] } }  // 1 pos, 0 neg, -1 uncertain, null blank
 * ```
 */
export const EMBEDDINGS_FORMAT = 'cxr-align/embeddings@1';
export const DEFAULT_MAX_TEST_ROWS = 2000;

export interface RunEmbeddings {
  labels: string[];
  dim: number;
  labelEmbeddings: number[][];
  test: { total: number; embeddings: number[][]; labels: (number | null)[][] } | null;
}

/** A matrix given either as rows or as one flat row-major array (e.g. a tensor's `dataSync()`). */
export type MatrixInput = readonly ArrayLike<number>[] | Float32Array | Float64Array;

export interface RunEmbeddingsInput {
  labels: readonly string[];
  /** labels.length rows of the embedding width. */
  labelEmbeddings: MatrixInput;
  /** Test image embeddings, one row per image; flat arrays are split by the row count of testLabels. */
  testEmbeddings?: MatrixInput;
  /** Test labels, one row per image and one column per label: 1, 0, -1 or NaN (not mentioned). */
  testLabels?: MatrixInput;
  /** Keep at most this many test rows (evenly spaced). Default 2000. */
  maxTestRows?: number;
}

function toRows(m: MatrixInput, rows: number, what: string): ArrayLike<number>[] {
  if (m instanceof Float32Array || m instanceof Float64Array) {
    if (rows === 0 || m.length % rows !== 0)
      throw new Error(`writeRunEmbeddings: ${what} has ${m.length} values, not a multiple of ${rows} rows`);
    const cols = m.length / rows;
    return Array.from({ length: rows }, (_, r) => m.subarray(r * cols, (r + 1) * cols));
  }
  if (m.length !== rows) throw new Error(`writeRunEmbeddings: ${what} has ${m.length} rows, expected ${rows}`);
  return [...m];
}

const round6 = (x: number): number => Number(x.toPrecision(6));

function roundRow(row: ArrayLike<number>, width: number, what: string): number[] {
  if (row.length !== width) throw new Error(`writeRunEmbeddings: a row of ${what} has ${row.length} values, expected ${width}`);
  const out = new Array<number>(width);
  for (let i = 0; i < width; i++) {
    const x = row[i]!;
    if (!Number.isFinite(x)) throw new Error(`writeRunEmbeddings: ${what} holds a non-finite value (${x})`);
    out[i] = round6(x);
  }
  return out;
}

/** Rows kept when capping n rows at max: evenly spaced, first row always kept, order preserved. */
export function capRows(n: number, max: number): number[] {
  if (n <= max) return Array.from({ length: n }, (_, i) => i);
  return Array.from({ length: max }, (_, i) => Math.floor((i * n) / max));
}

/** Build the document `writeRunEmbeddings` writes (exported for tests and in-memory reports). */
export function buildRunEmbeddings(input: RunEmbeddingsInput): RunEmbeddings {
  const L = input.labels.length;
  if (L === 0) throw new Error('writeRunEmbeddings: no labels');
  const labelRows = toRows(input.labelEmbeddings, L, 'labelEmbeddings');
  const dim = labelRows[0]!.length;
  if (dim === 0) throw new Error('writeRunEmbeddings: embeddings have width 0');
  const labelEmbeddings = labelRows.map((r) => roundRow(r, dim, 'labelEmbeddings'));
  let test: RunEmbeddings['test'] = null;
  if (input.testEmbeddings || input.testLabels) {
    if (!input.testEmbeddings || !input.testLabels)
      throw new Error('writeRunEmbeddings: give both testEmbeddings and testLabels, or neither');
    const tl = input.testLabels;
    const n = tl instanceof Float32Array || tl instanceof Float64Array ? tl.length / L : tl.length;
    if (!Number.isInteger(n)) throw new Error(`writeRunEmbeddings: testLabels has ${tl.length} values, not a multiple of ${L} labels`);
    const embRows = toRows(input.testEmbeddings, n, 'testEmbeddings');
    const labRows = toRows(tl, n, 'testLabels');
    const keep = capRows(n, input.maxTestRows ?? DEFAULT_MAX_TEST_ROWS);
    test = {
      total: n,
      embeddings: keep.map((i) => roundRow(embRows[i]!, dim, 'testEmbeddings')),
      labels: keep.map((i) => {
        const row = labRows[i]!;
        if (row.length !== L) throw new Error(`writeRunEmbeddings: a row of testLabels has ${row.length} values, expected ${L}`);
        return Array.from({ length: L }, (_, j) => (Number.isNaN(row[j]!) ? null : row[j]!));
      }),
    };
  }
  return { labels: [...input.labels], dim, labelEmbeddings, test };
}

/** Write `RUN/embeddings.json` atomically. Call once at the end of a run (after evaluation). */
export async function writeRunEmbeddings(runDir: string, input: RunEmbeddingsInput): Promise<string> {
  const doc = buildRunEmbeddings(input);
  const file = path.join(runDir, EMBEDDINGS_FILE);
  await writeJsonAtomic(file, {
    format: EMBEDDINGS_FORMAT,
    labels: doc.labels,
    dim: doc.dim,
    label_embeddings: doc.labelEmbeddings,
    test: doc.test,
  });
  return file;
}

const fileSchema = z
  .object({
    format: z.literal(EMBEDDINGS_FORMAT),
    labels: z.array(z.string()).min(1),
    dim: z.number().int().positive(),
    label_embeddings: z.array(z.array(z.number())),
    test: z
      .object({
        total: z.number().int().nonnegative(),
        embeddings: z.array(z.array(z.number())),
        labels: z.array(z.array(z.number().nullable())),
      })
      .nullable(),
  })
  .strict();

/** Read `RUN/embeddings.json`, or null when the run has none. */
export async function readRunEmbeddings(runDir: string): Promise<RunEmbeddings | null> {
  const file = path.join(runDir, EMBEDDINGS_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UserError(`${file}: cannot read (${(e as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const parsed = fileSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UserError(`${file}: invalid at '${issue.path.join('.')}': ${issue.message} (write it with writeRunEmbeddings)`);
  }
  const d = parsed.data;
  const L = d.labels.length;
  const bad = (what: string) => new UserError(`${file}: ${what}`);
  if (d.label_embeddings.length !== L) throw bad(`'label_embeddings' has ${d.label_embeddings.length} rows for ${L} labels`);
  d.label_embeddings.forEach((r, i) => {
    if (r.length !== d.dim) throw bad(`'label_embeddings.${i}' has ${r.length} values, 'dim' is ${d.dim}`);
  });
  if (d.test) {
    if (d.test.embeddings.length !== d.test.labels.length) throw bad(`'test.embeddings' and 'test.labels' differ in length`);
    d.test.embeddings.forEach((r, i) => {
      if (r.length !== d.dim) throw bad(`'test.embeddings.${i}' has ${r.length} values, 'dim' is ${d.dim}`);
    });
    d.test.labels.forEach((r, i) => {
      if (r.length !== L) throw bad(`'test.labels.${i}' has ${r.length} values for ${L} labels`);
    });
  }
  return { labels: d.labels, dim: d.dim, labelEmbeddings: d.label_embeddings, test: d.test };
}
