import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from './util/errors.js';
import { packageRoot } from './util/paths.js';

/**
 * Label sets are data (shared/labels/*.json), not code: the label names in column order,
 * the parent -> child edges of the finding hierarchy, sibling groups, the competition subset
 * used for the headline AUROC, and (for non-CheXpert sets) the mapping onto CheXpert names.
 */
const labelSetSchema = z
  .object({
    name: z.string().min(1),
    description: z.string(),
    labels: z.array(z.string().min(1)).min(1),
    competition: z.array(z.string()),
    edges: z.array(z.tuple([z.string(), z.string()])),
    groups: z.record(z.string(), z.array(z.string()).min(2)),
    toChexpert: z.record(z.string(), z.string().nullable()),
  })
  .strict();

export type LabelSet = z.infer<typeof labelSetSchema>;

export const BUILTIN_LABEL_SETS = ['chexpert14', 'nih14'] as const;
export type BuiltinLabelSetName = (typeof BUILTIN_LABEL_SETS)[number];

/** Validate a parsed label-set document; every name it mentions must be one of its labels. */
export function parseLabelSet(doc: unknown, source: string): LabelSet {
  const parsed = labelSetSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UserError(`${source}: invalid label set at '${issue.path.join('.')}': ${issue.message}`);
  }
  const set = parsed.data;
  const known = new Set(set.labels);
  if (known.size !== set.labels.length) throw new UserError(`${source}: duplicate label names in 'labels'`);
  const check = (name: string, field: string) => {
    if (!known.has(name)) throw new UserError(`${source}: '${field}' names '${name}', which is not in 'labels'`);
  };
  set.competition.forEach((n) => check(n, 'competition'));
  set.edges.forEach(([p, c]) => {
    check(p, 'edges');
    check(c, 'edges');
  });
  for (const [g, members] of Object.entries(set.groups)) members.forEach((n) => check(n, `groups.${g}`));
  Object.keys(set.toChexpert).forEach((n) => check(n, 'toChexpert'));
  return set;
}

const cache = new Map<string, LabelSet>();

/** A built-in label set by name, or a label-set JSON file by path. */
export function loadLabelSet(nameOrPath: string): LabelSet {
  const hit = cache.get(nameOrPath);
  if (hit) return hit;
  const builtin = (BUILTIN_LABEL_SETS as readonly string[]).includes(nameOrPath);
  const file = builtin ? path.join(packageRoot, 'shared', 'labels', `${nameOrPath}.json`) : path.resolve(nameOrPath);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UserError(
      `label set '${nameOrPath}' not found: use one of ${BUILTIN_LABEL_SETS.join(', ')} or a path to a label-set JSON file`,
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const set = parseLabelSet(doc, file);
  cache.set(nameOrPath, set);
  return set;
}

/** Human-readable text of a label for prompts ("Pleural_Thickening" -> "Pleural Thickening"). */
export function labelText(label: string): string {
  return label.replace(/_/g, ' ');
}
