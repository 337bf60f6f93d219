import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../../shared/util/errors.js';
import { readRunEmbeddings, type RunEmbeddings } from '../../shared/run/embeddings.js';
import { parseJsonl } from '../../shared/run/jsonl.js';
import {
  CONFIG_FILE,
  ENVIRONMENT_FILE,
  EVAL_FILE,
  type EvalResult,
  evalSchema,
  METRICS_FILE,
  type MetricsLine,
  metricsLineSchema,
} from '../../shared/run/files.js';

/**
 * Readers for the files a training run leaves in its run directory (written by the trainer):
 * `config.json`, `metrics.jsonl`, `eval.json`, `environment.json` and `embeddings.json`.
 * Every reader names the file (and line) of anything malformed, so a broken run directory
 * gives one clear error instead of a blank chart.
 */

const environmentSchema = z.record(z.string(), z.unknown());
export type RunEnvironment = Record<string, unknown>;

export interface RunData {
  /** The run directory, or the eval file when only one was given (readRunDir). */
  dir: string;
  /**
   * The run's name in reports: the directory's base name (an eval file's: its folder's, followed
   * by its base name unless it is eval.json), marked `(zero-shot)` when the evaluation is zero-shot.
   */
  name: string;
  /** Whether `dir` is an eval file alone (no run directory to write a report into). */
  evalOnly?: boolean;
  config: Record<string, unknown> | null;
  metrics: MetricsLine[];
  evaluation: EvalResult | null;
  environment: RunEnvironment | null;
  embeddings: RunEmbeddings | null;
  /** Notes about what was skipped (a torn last metrics line), shown in the report. */
  notes: string[];
}

async function readText(file: string): Promise<string | null> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UserError(`${file}: cannot read (${(e as Error).message})`);
  }
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

function zodProblem(err: z.ZodError): string {
  const issue = err.issues[0]!;
  const where = issue.path.length ? `'${issue.path.join('.')}'` : 'the top level';
  return `${where}: ${issue.message}`;
}

/**
 * Parse `metrics.jsonl`. A final line without its newline is what a run killed mid-write
 * leaves behind; it is skipped with a note. Any other bad line is an error naming the line.
 */
export function parseMetricsJsonl(text: string, file: string, notes: string[] = []): MetricsLine[] {
  const { lines, torn } = parseJsonl(text, file);
  if (torn !== null)
    notes.push(`${path.basename(file)}: skipped the incomplete last line ${torn} (the run was interrupted while writing it)`);
  return lines.map((l) => {
    const parsed = metricsLineSchema.safeParse(l.doc);
    if (!parsed.success) throw new UserError(`${file}:${l.n}: ${zodProblem(parsed.error)}`);
    return parsed.data;
  });
}

export function parseEval(doc: unknown, file: string): EvalResult {
  const parsed = evalSchema.safeParse(doc);
  if (!parsed.success) throw new UserError(`${file}: invalid evaluation result at ${zodProblem(parsed.error)}`);
  const ev = parsed.data;
  for (const [label, ci] of Object.entries(ev.ci ?? {})) {
    if (!(label in ev.auroc)) throw new UserError(`${file}: 'ci.${label}' names a label that is not in 'auroc'`);
    if (ci && !(ci[0] <= ci[1])) throw new UserError(`${file}: 'ci.${label}' has lower bound ${ci[0]} above upper bound ${ci[1]}`);
  }
  return ev;
}

/** Numeric series in the metrics: every loss term, in first-seen order (`loss` first). */
export function lossKeys(metrics: readonly MetricsLine[]): string[] {
  const keys = new Set<string>();
  for (const m of metrics) for (const k of Object.keys(m)) if (k === 'loss' || k.startsWith('loss_')) keys.add(k);
  return [...keys].sort((a, b) => (a === 'loss' ? -1 : b === 'loss' ? 1 : 0));
}

/** Step-time split keys (`time_*_s`) present in the metrics, in first-seen order. */
export function timeKeys(metrics: readonly MetricsLine[]): string[] {
  const keys = new Set<string>();
  for (const m of metrics) for (const k of Object.keys(m)) if (/^time_.+_s$/.test(k)) keys.add(k);
  return [...keys];
}

/** A run's name in reports, marked when its evaluation is zero-shot (no classifier trained). */
function displayName(base: string, evaluation: EvalResult | null): string {
  return evaluation?.zero_shot && !base.includes('zero-shot') ? `${base} (zero-shot)` : base;
}

/**
 * Read everything a run directory holds; missing files are null, malformed ones an error. An eval
 * JSON file (any `coordinator eval --out`, zero-shot or not) stands for a run that has only it.
 */
export async function readRunDir(dir: string): Promise<RunData> {
  const abs = path.resolve(dir);
  const st = await fsp.stat(abs).catch(() => null);
  if (st?.isFile() && abs.endsWith('.json')) {
    const evaluation = parseEval(parseJson((await readText(abs))!, abs), abs);
    // A folder's eval.json is named as the folder is; another eval file by its folder and base name.
    const folder = path.basename(path.dirname(abs));
    const name = path.basename(abs) === EVAL_FILE ? folder : `${folder}/${path.basename(abs, '.json')}`;
    return {
      dir: abs,
      name: displayName(name, evaluation),
      evalOnly: true,
      config: null,
      metrics: [],
      evaluation,
      environment: null,
      embeddings: null,
      notes: [],
    };
  }
  if (!st?.isDirectory())
    throw new UserError(`${dir}: not a run directory (it does not exist or is not a directory) nor an eval .json file`);
  const notes: string[] = [];
  const file = (name: string) => path.join(abs, name);

  const configText = await readText(file(CONFIG_FILE));
  let config: Record<string, unknown> | null = null;
  if (configText !== null) {
    const doc = parseJson(configText, file(CONFIG_FILE));
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new UserError(`${file(CONFIG_FILE)}: expected a JSON object`);
    config = doc as Record<string, unknown>;
  }
  const metricsText = await readText(file(METRICS_FILE));
  const metrics = metricsText === null ? [] : parseMetricsJsonl(metricsText, file(METRICS_FILE), notes);
  const evalText = await readText(file(EVAL_FILE));
  const evaluation = evalText === null ? null : parseEval(parseJson(evalText, file(EVAL_FILE)), file(EVAL_FILE));
  const envText = await readText(file(ENVIRONMENT_FILE));
  let environment: RunEnvironment | null = null;
  if (envText !== null) {
    const parsed = environmentSchema.safeParse(parseJson(envText, file(ENVIRONMENT_FILE)));
    if (!parsed.success) throw new UserError(`${file(ENVIRONMENT_FILE)}: expected a JSON object`);
    environment = parsed.data;
  }
  const embeddings = await readRunEmbeddings(abs);

  if (!config && metrics.length === 0 && !evaluation) {
    throw new UserError(
      `${dir}: no config.json, metrics.jsonl or eval.json here; is this a run directory (the --run-dir of a training run)?`,
    );
  }
  return { dir: abs, name: displayName(path.basename(abs), evaluation), config, metrics, evaluation, environment, embeddings, notes };
}
