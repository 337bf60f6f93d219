import { UserError } from '../shared/util/errors.js';
import { keyedUniform } from '../shared/random/generators.js';

/**
 * Classification targets from raw labels (1, 0, -1 uncertain, NaN blank): the per-label
 * uncertainty policies (--uncertainty, --uncertainty-label) and the blank policy (--blank).
 */

export const UNCERTAINTY_POLICIES = ['ignore', 'zeros', 'ones', 'lsr-ones', 'lsr-zeros'] as const;
export type UncertaintyPolicy = (typeof UNCERTAINTY_POLICIES)[number];
export type BlankPolicy = 'mask' | 'zeros';

export interface TargetOptions {
  /** One policy per label, for labels equal to -1 (uncertain). */
  uncertainty: UncertaintyPolicy[];
  /** Blank (NaN, "not mentioned") labels: masked out, or negative. */
  blank: BlankPolicy;
  seed: number;
}

/** Label-smoothing ranges of Pham et al.: uncertain-as-positive ~ U(0.55, 0.85), as-negative ~ U(0, 0.3). */
export const LSR_ONES: readonly [number, number] = [0.55, 0.85];
export const LSR_ZEROS: readonly [number, number] = [0, 0.3];

/**
 * Classification targets and mask for n samples from raw labels (1, 0, -1, NaN). Smoothed
 * targets are drawn from a hash of (seed, epoch, dataset index, label), not from a stream, so a
 * sample gets the same target whatever its position in the batch and whichever rank holds it.
 */
export function resolveTargets(
  labels: Float32Array,
  n: number,
  L: number,
  opts: TargetOptions,
  sampleKeys: readonly number[],
  epoch: number,
): { targets: Float32Array; mask: Float32Array } {
  const targets = new Float32Array(n * L);
  const mask = new Float32Array(n * L);
  for (let i = 0; i < n; i++) {
    for (let l = 0; l < L; l++) {
      const k = i * L + l;
      const y = labels[k]!;
      if (Number.isNaN(y)) {
        if (opts.blank === 'zeros') mask[k] = 1;
        continue;
      }
      if (y === 1 || y === 0) {
        targets[k] = y;
        mask[k] = 1;
        continue;
      }
      const policy = opts.uncertainty[l]!;
      if (policy === 'ignore') continue;
      mask[k] = 1;
      if (policy === 'ones') targets[k] = 1;
      else if (policy === 'zeros') targets[k] = 0;
      else {
        const [lo, hi] = policy === 'lsr-ones' ? LSR_ONES : LSR_ZEROS;
        targets[k] = lo + (hi - lo) * keyedUniform(opts.seed, epoch, sampleKeys[i]!, l);
      }
    }
  }
  return { targets, mask };
}

/**
 * Per-label uncertainty policies from a default and `Label=policy` overrides.
 */
export function uncertaintyPolicies(labels: readonly string[], dflt: string, overrides: readonly string[]): UncertaintyPolicy[] {
  const check = (p: string, where: string): UncertaintyPolicy => {
    if (!(UNCERTAINTY_POLICIES as readonly string[]).includes(p))
      throw new UserError(`${where}: '${p}' is not an uncertainty policy (${UNCERTAINTY_POLICIES.join(', ')})`);
    return p as UncertaintyPolicy;
  };
  const out = labels.map(() => check(dflt, '--uncertainty'));
  for (const o of overrides) {
    const eq = o.lastIndexOf('=');
    if (eq <= 0) throw new UserError(`--uncertainty-label '${o}': expected LABEL=POLICY, e.g. Atelectasis=lsr-ones`);
    const name = o.slice(0, eq);
    const l = labels.indexOf(name);
    if (l < 0) throw new UserError(`--uncertainty-label '${o}': no label '${name}' (labels: ${labels.join(', ')})`);
    out[l] = check(o.slice(eq + 1), `--uncertainty-label '${o}'`);
  }
  return out;
}
