import { UserError } from '../../shared/util/errors.js';
import { loadLabelSet } from '../../shared/labels.js';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import type { Manifest } from '../../shared/dataset/manifest.js';
import { checkFractions } from '../../shared/dataset/split.js';
import { buildDirAtomically } from './output-dir.js';
import { planSynth, synthSamples, type SynthOptions } from './synth.js';

export const SYNTH_CREATED_BY = 'coordinator data synth';

export function checkSynthOptions(o: SynthOptions): void {
  if (!Number.isInteger(o.count) || o.count < 1) throw new UserError(`--count must be a positive integer, got ${o.count}`);
  if (!Number.isInteger(o.imageSize) || o.imageSize < 16 || o.imageSize > 1024)
    throw new UserError(`--image-size must be an integer in 16..1024, got ${o.imageSize}`);
  if (!Number.isInteger(o.seed) || o.seed < 0 || o.seed > 0xffffffff)
    throw new UserError(`--seed must be an integer in 0..4294967295, got ${o.seed}`);
  checkFractions(o.fractions);
}

/** The `source` block of a synthetic dataset's manifest: enough to tell whether it can be reused. */
export function synthSource(o: SynthOptions): Record<string, unknown> {
  return {
    kind: 'synthetic',
    count: o.count,
    imageSize: o.imageSize,
    seed: o.seed,
    valFraction: o.fractions.val,
    testFraction: o.fractions.test,
    generator: 1,
  };
}

/** Generate the synthetic dataset into `out` (atomically). */
export async function runSynth(out: string, overwrite: boolean, o: SynthOptions): Promise<Manifest> {
  checkSynthOptions(o);
  const labels = loadLabelSet('chexpert14');
  return buildDirAtomically(out, overwrite, async (tmp) => {
    const w = new DatasetWriter(tmp, { height: o.imageSize, width: o.imageSize, labelSet: labels.name, labels: labels.labels });
    try {
      for (const { split, sample } of synthSamples(o, planSynth(o))) await w.add(split, sample);
      return await w.finish({ createdBy: SYNTH_CREATED_BY, source: synthSource(o) });
    } catch (e) {
      await w.abort();
      throw e;
    }
  });
}
