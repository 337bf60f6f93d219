import { UserError } from '../util/errors.js';
import type { SplitName } from './manifest.js';
import { Prng, deriveSeed } from '../random/generators.js';

export interface SplitFractions {
  val: number;
  test: number;
}

export function checkFractions(f: SplitFractions): void {
  for (const [k, v] of Object.entries(f)) if (!(v >= 0 && v < 1)) throw new UserError(`--${k}-fraction must be in [0, 1), got ${v}`);
  if (f.val + f.test >= 1) throw new UserError(`--val-fraction + --test-fraction must be below 1, got ${f.val + f.test}`);
}

/**
 * Assign whole patients to splits: patients are put in a seeded random order (over their sorted
 * ids, so the input row order does not matter), then test is filled until it holds at least
 * `test` of the images, then val, and the rest is train. No patient is in two splits, and the
 * image fractions land within one patient's images of the request.
 *
 * `imagesPerPatient`: patient id -> number of images. Returns patient id -> split.
 */
export function splitPatients(imagesPerPatient: Map<string, number>, f: SplitFractions, seed: number): Map<string, SplitName> {
  checkFractions(f);
  const ids = [...imagesPerPatient.keys()].sort();
  new Prng(deriveSeed(seed, 'patient-split')).shuffle(ids);
  let total = 0;
  for (const n of imagesPerPatient.values()) total += n;
  const wantTest = f.test * total;
  const wantVal = f.val * total;
  const out = new Map<string, SplitName>();
  let test = 0;
  let val = 0;
  for (const id of ids) {
    const n = imagesPerPatient.get(id)!;
    if (test < wantTest) {
      out.set(id, 'test');
      test += n;
    } else if (val < wantVal) {
      out.set(id, 'val');
      val += n;
    } else out.set(id, 'train');
  }
  return out;
}
