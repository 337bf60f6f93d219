import { UserError } from '../shared/util/errors.js';
import type { LabelSet } from '../shared/labels.js';

/** The label prior's target similarity between label embeddings (--label-prior), from the label set's graph. */

export type LabelPriorKind = 'orth' | 'graph';

/**
 * Target similarity S for the label prior. `orth`: the identity. `graph`: S_ii = 1 and
 * S_ij = 0.5^d(i, j) where d is the shortest-path length between i and j in the undirected label
 * graph whose edges are the hierarchy's parent-child edges plus every pair inside a group; labels
 * with no path between them get 0. So a parent and child (Lung Opacity, Edema) or two pleural
 * findings target cosine 0.5, two children of one parent 0.25, unrelated findings 0.
 */
export function labelPriorTarget(kind: LabelPriorKind, labels: readonly string[], set: LabelSet | null): Float32Array {
  const L = labels.length;
  const S = new Float32Array(L * L);
  for (let i = 0; i < L; i++) S[i * L + i] = 1;
  if (kind === 'orth') return S;
  if (!set)
    throw new UserError(
      "--label-prior graph: the dataset's labels are not a known label set, so there is no label graph; use --label-prior orth",
    );
  const idx = new Map(labels.map((n, i) => [n, i]));
  const adj: number[][] = labels.map(() => []);
  const link = (a: string, b: string) => {
    const i = idx.get(a);
    const j = idx.get(b);
    if (i === undefined || j === undefined || i === j) return;
    adj[i]!.push(j);
    adj[j]!.push(i);
  };
  for (const [p, c] of set.edges) link(p, c);
  for (const members of Object.values(set.groups)) for (const a of members) for (const b of members) link(a, b);
  for (let s = 0; s < L; s++) {
    const dist = new Array<number>(L).fill(-1);
    dist[s] = 0;
    const queue = [s];
    for (let q = 0; q < queue.length; q++) {
      const u = queue[q]!;
      for (const w of adj[u]!)
        if (dist[w] === -1) {
          dist[w] = dist[u]! + 1;
          queue.push(w);
        }
    }
    for (let t = 0; t < L; t++) if (t !== s && dist[t]! > 0) S[s * L + t] = 0.5 ** dist[t]!;
  }
  return S;
}
