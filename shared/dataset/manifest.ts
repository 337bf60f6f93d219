import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../util/errors.js';

/** The file that makes a directory a dataset; written last, so its presence means complete. */
export const MANIFEST_FILE = 'manifest.json';
export const FORMAT_NAME = 'cxr-align-dataset';
export const FORMAT_VERSION = 1;

export const SPLITS = ['train', 'val', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];

const shardSchema = z
  .object({
    /** File name inside the dataset directory. */
    file: z.string().regex(/^[A-Za-z0-9._-]+\.arrow$/, 'a plain file name ending in .arrow'),
    rows: z.number().int().nonnegative(),
    batches: z.number().int().nonnegative(),
    bytes: z.number().int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits'),
  })
  .strict();

const splitSchema = z
  .object({
    rows: z.number().int().nonnegative(),
    patients: z.number().int().nonnegative(),
    studies: z.number().int().nonnegative(),
    /** Count of label == 1 per label name. */
    positives: z.record(z.string(), z.number().int().nonnegative()),
    shards: z.array(shardSchema),
  })
  .strict();

export const manifestSchema = z
  .object({
    format: z.literal(FORMAT_NAME),
    formatVersion: z.literal(FORMAT_VERSION),
    createdBy: z.string(),
    createdAt: z.string(),
    /** How the data was made (command options, input files); informative only. */
    source: z.record(z.string(), z.unknown()),
    labelSet: z.string().min(1),
    labels: z.array(z.string().min(1)).min(1),
    image: z
      .object({
        height: z.number().int().positive(),
        width: z.number().int().positive(),
        channels: z.literal(1),
        dtype: z.literal('uint8'),
      })
      .strict(),
    columns: z.array(z.string()),
    /** Rows in every record batch but the last of each shard. */
    rowsPerBatch: z.number().int().positive(),
    splits: z.object({ train: splitSchema, val: splitSchema, test: splitSchema }).strict(),
  })
  .strict();

export type Manifest = z.infer<typeof manifestSchema>;
export type ShardInfo = z.infer<typeof shardSchema>;
export type SplitInfo = z.infer<typeof splitSchema>;

/** Check a parsed manifest document; errors name the file and the field. */
export function parseManifest(doc: unknown, file: string): Manifest {
  const parsed = manifestSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.join('.') || '(top level)';
    throw new UserError(`${file}: invalid dataset manifest at '${field}': ${issue.message}`);
  }
  const m = parsed.data;
  for (const s of SPLITS) {
    const split = m.splits[s];
    const sum = split.shards.reduce((a, x) => a + x.rows, 0);
    if (sum !== split.rows) throw new UserError(`${file}: 'splits.${s}.rows' is ${split.rows} but its shards hold ${sum} rows`);
    split.shards.forEach((sh, i) => {
      const want = Math.ceil(sh.rows / m.rowsPerBatch);
      if (sh.batches !== want)
        throw new UserError(
          `${file}: 'splits.${s}.shards.${i}.batches' is ${sh.batches}, expected ${want} for ${sh.rows} rows of ${m.rowsPerBatch}`,
        );
    });
  }
  for (const c of ['image', 'labels', 'subject_id', 'study_id', 'path'])
    if (!m.columns.includes(c)) throw new UserError(`${file}: 'columns' lacks the required column '${c}'`);
  return m;
}

/** Read and validate `DIR/manifest.json`. */
export async function readManifest(dir: string): Promise<Manifest> {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new UserError(
        `${file} not found: '${dir}' is not a dataset (make one with 'coordinator data prepare' or 'coordinator data synth')`,
      );
    throw new UserError(`${file}: cannot read (${(e as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseManifest(doc, file);
}
