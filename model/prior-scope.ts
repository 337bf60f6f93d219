import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import { labelPriorLoss } from './losses.js';

/**
 * Which prompt embeddings the label prior keeps apart (`--prior-scope`). `names`: the L label-name
 * embeddings against the label graph's target (--label-prior). `states`: the 2L state prompts
 * ("Positive X", "Negative X") against the identity, so every state prompt is orthogonal to every
 * other, its own label's opposite state included (the method's later experiment). `all`: both
 * terms, added.
 */
export const PRIOR_SCOPES = ['names', 'states', 'all'] as const;
export type PriorScope = (typeof PRIOR_SCOPES)[number];

export function priorScope(s: string): PriorScope {
  if (!(PRIOR_SCOPES as readonly string[]).includes(s))
    throw new UserError(`--prior-scope '${s}': expected one of ${PRIOR_SCOPES.join(', ')}`);
  return s as PriorScope;
}

/** The state prompts' target: the 2L x 2L identity, rows [positives; negatives] like the embeddings. */
export function statePriorTarget(labels: number): Float32Array {
  const n = 2 * labels;
  const S = new Float32Array(n * n);
  for (let i = 0; i < n; i++) S[i * n + i] = 1;
  return S;
}

/**
 * The label prior over `scope`: mean((N N^T - S)^2) over the normalised names N [L, D] and/or
 * mean((P P^T - I)^2) over the normalised state prompts P = [positive; negative] [2L, D], each
 * divided by the world size (a parameter-only term that every rank adds), so the rank sum is
 * exact as for the names alone. `namesTarget` is S [L, L] (unused for `states`).
 */
export function scopedPriorLoss(
  text: { names: tf.Tensor2D; positive: tf.Tensor2D; negative: tf.Tensor2D },
  scope: PriorScope,
  namesTarget: tf.Tensor2D | null,
  world: number,
): tf.Scalar {
  const terms: tf.Scalar[] = [];
  if (scope !== 'states') {
    if (!namesTarget) throw new Error('label prior: the names scope needs its target');
    terms.push(labelPriorLoss(text.names, namesTarget, world));
  }
  if (scope !== 'names') {
    const L = text.positive.shape[0];
    const I = tf.tensor2d(statePriorTarget(L), [2 * L, 2 * L]);
    terms.push(labelPriorLoss(tf.concat([text.positive, text.negative], 0), I, world));
  }
  return terms.length === 1 ? terms[0]! : (tf.add(terms[0]!, terms[1]!) as tf.Scalar);
}
