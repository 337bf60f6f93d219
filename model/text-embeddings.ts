import { readFileSync } from 'node:fs';
import { UserError } from '../shared/util/errors.js';
import { labelPrompts } from './vit.js';

/**
 * Precomputed prompt embeddings (`--text-embeddings FILE`), e.g. exported from BiomedCLIP's text
 * tower: JSON `{"dim": D, "vectors": {"<prompt>": [D numbers], ...}}` with one vector for each
 * of the label name, "Positive <label>" and "Negative <label>" of every label (labelText form:
 * underscores become spaces). Returns [3L, D] in the model's row order.
 */
export function loadTextEmbeddings(file: string, labels: readonly string[]): { dim: number; vectors: Float32Array } {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`--text-embeddings ${file}: cannot read JSON (${(e as Error).message})`);
  }
  const d = doc as { dim?: unknown; vectors?: unknown };
  if (typeof d.dim !== 'number' || !Number.isInteger(d.dim) || d.dim <= 0)
    throw new UserError(`--text-embeddings ${file}: 'dim' must be a positive integer`);
  if (typeof d.vectors !== 'object' || d.vectors === null)
    throw new UserError(`--text-embeddings ${file}: 'vectors' must be an object keyed by prompt`);
  const vectors = d.vectors as Record<string, unknown>;
  const prompts = labelPrompts(labels);
  const out = new Float32Array(prompts.length * d.dim);
  prompts.forEach((p, i) => {
    const v = vectors[p];
    if (!Array.isArray(v))
      throw new UserError(
        `--text-embeddings ${file}: no vector for prompt '${p}' (needs every label name, 'Positive <label>' and 'Negative <label>')`,
      );
    if (v.length !== d.dim)
      throw new UserError(`--text-embeddings ${file}: vector '${p}' has ${v.length} numbers, 'dim' says ${String(d.dim)}`);
    v.forEach((x, k) => {
      if (typeof x !== 'number' || !Number.isFinite(x))
        throw new UserError(`--text-embeddings ${file}: vector '${p}' element ${k} is not a finite number`);
      out[i * (d.dim as number) + k] = x;
    });
  });
  return { dim: d.dim, vectors: out };
}
