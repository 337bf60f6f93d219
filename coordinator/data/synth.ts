import { loadLabelSet } from '../../shared/labels.js';
import { Prng, deriveSeed } from '../../shared/random/generators.js';
import { splitPatients, type SplitFractions } from '../../shared/dataset/split.js';
import type { SplitName } from '../../shared/dataset/manifest.js';
import type { Sample } from '../../shared/dataset/writer.js';
import { drawAnatomy, renderStudy, SYNTH_FINDINGS, type Anatomy, type SynthFinding } from './synth-image.js';

/**
 * The synthetic CheXpert-14 dataset: patients with several studies, a latent truth per finding,
 * and reported labels derived from it the way radiology labellers do.
 *
 * Truth. Base rates below; the hierarchy of shared/labels/chexpert14.json is followed: a child
 * makes its parent very likely (Cardiomegaly -> Enlarged Cardiomediastinum 0.85; any of Edema,
 * Consolidation, Pneumonia, Lung Lesion, Atelectasis -> Lung Opacity 0.9; Pneumonia ->
 * Consolidation 0.7), plus clinical co-occurrence (Cardiomegaly raises Edema, Effusion raises
 * Atelectasis). Chronic findings (devices, cardiomegaly, lesions, old fractures) persist into a
 * patient's next study with probability 0.75. No Finding = no pathology (devices allowed).
 *
 * Reported labels. Every visible sign is in the picture; the label noise is only in how it is
 * reported: a present finding is reported 1, or -1 (uncertain) at `uncertainPos`; an absent one
 * is blank (NaN, "not mentioned") unless mentioned as 0 (`mentionNeg`), or -1 at 0.03.
 * So 1 and 0 labels are always right, and a model that learns the signs can reach AUROC near 1
 * on them, while the trainer still has to handle CheXpert-like -1 and blank rates.
 */
interface FindingRates {
  base: number;
  uncertainPos: number;
  mentionNeg: number;
  chronic: boolean;
}

const RATES: Record<SynthFinding, FindingRates> = {
  'Enlarged Cardiomediastinum': { base: 0.07, uncertainPos: 0.12, mentionNeg: 0.25, chronic: true },
  Cardiomegaly: { base: 0.14, uncertainPos: 0.08, mentionNeg: 0.3, chronic: true },
  'Lung Opacity': { base: 0.12, uncertainPos: 0.05, mentionNeg: 0.3, chronic: false },
  'Lung Lesion': { base: 0.07, uncertainPos: 0.08, mentionNeg: 0.25, chronic: true },
  Edema: { base: 0.13, uncertainPos: 0.1, mentionNeg: 0.35, chronic: false },
  Consolidation: { base: 0.08, uncertainPos: 0.15, mentionNeg: 0.35, chronic: false },
  Pneumonia: { base: 0.07, uncertainPos: 0.2, mentionNeg: 0.3, chronic: false },
  Atelectasis: { base: 0.13, uncertainPos: 0.15, mentionNeg: 0.25, chronic: false },
  Pneumothorax: { base: 0.09, uncertainPos: 0.05, mentionNeg: 0.5, chronic: false },
  'Pleural Effusion': { base: 0.2, uncertainPos: 0.08, mentionNeg: 0.45, chronic: false },
  'Pleural Other': { base: 0.06, uncertainPos: 0.15, mentionNeg: 0.2, chronic: true },
  Fracture: { base: 0.06, uncertainPos: 0.1, mentionNeg: 0.2, chronic: true },
  'Support Devices': { base: 0.3, uncertainPos: 0.02, mentionNeg: 0.3, chronic: true },
};

const OPACITY_CHILDREN: SynthFinding[] = ['Edema', 'Consolidation', 'Pneumonia', 'Lung Lesion', 'Atelectasis'];

/** Latent findings of one study, given the patient's previous study (or none). */
export function drawFindings(rng: Prng, previous: ReadonlySet<SynthFinding> | null): Set<SynthFinding> {
  const has = new Set<SynthFinding>();
  const roll = (f: SynthFinding, p: number) => {
    const keep = previous !== null && RATES[f].chronic && previous.has(f) && rng.chance(0.75);
    if (keep || rng.chance(p)) has.add(f);
  };
  for (const f of [
    'Support Devices',
    'Fracture',
    'Pleural Other',
    'Pneumothorax',
    'Pleural Effusion',
    'Cardiomegaly',
    'Pneumonia',
    'Lung Lesion',
  ] as const)
    roll(f, RATES[f].base);
  roll('Enlarged Cardiomediastinum', has.has('Cardiomegaly') ? 0.85 : RATES['Enlarged Cardiomediastinum'].base);
  roll('Consolidation', has.has('Pneumonia') ? 0.7 : RATES.Consolidation.base);
  roll('Edema', has.has('Cardiomegaly') ? 0.3 : RATES.Edema.base);
  roll('Atelectasis', has.has('Pleural Effusion') ? 0.3 : RATES.Atelectasis.base);
  roll('Lung Opacity', OPACITY_CHILDREN.some((c) => has.has(c)) ? 0.9 : RATES['Lung Opacity'].base);
  return has;
}

/** Reported labels in chexpert14 column order (No Finding first). */
export function reportLabels(rng: Prng, has: ReadonlySet<SynthFinding>, labelNames: readonly string[]): Float32Array {
  const out = new Float32Array(labelNames.length);
  const pathology = [...has].some((f) => f !== 'Support Devices');
  labelNames.forEach((name, k) => {
    if (name === 'No Finding') {
      out[k] = !pathology ? 1 : rng.chance(0.5) ? 0 : NaN;
      return;
    }
    const r = RATES[name as SynthFinding];
    if (!r) throw new Error(`synth: no rates for label '${name}'`);
    if (has.has(name as SynthFinding)) out[k] = rng.chance(r.uncertainPos) ? -1 : 1;
    else out[k] = rng.chance(0.03) ? -1 : rng.chance(r.mentionNeg) ? 0 : NaN;
  });
  return out;
}

export interface SynthOptions {
  count: number;
  imageSize: number;
  seed: number;
  fractions: SplitFractions;
}

export interface SynthPlan {
  /** Studies per patient, in patient order; sums to count. */
  patients: { id: string; studies: number }[];
  split: Map<string, SplitName>;
}

/** Patients and their study counts (1 + geometric, mean about 2.5), then the patient split. */
export function planSynth(o: SynthOptions): SynthPlan {
  const rng = new Prng(deriveSeed(o.seed, 'synth-patients'));
  const patients: { id: string; studies: number }[] = [];
  let left = o.count;
  while (left > 0) {
    let n = 1;
    while (n < 8 && rng.chance(0.6)) n++;
    n = Math.min(n, left);
    left -= n;
    patients.push({ id: `synth${String(patients.length + 1).padStart(6, '0')}`, studies: n });
  }
  const split = splitPatients(new Map(patients.map((p) => [p.id, p.studies])), o.fractions, o.seed);
  return { patients, split };
}

/**
 * Every synthetic sample in patient order with its split. Each patient draws from its own PRNG
 * stream, so a patient's pictures do not depend on how many came before.
 */
export function* synthSamples(o: SynthOptions, plan = planSynth(o)): Generator<{ split: SplitName; sample: Sample }> {
  const labelNames = loadLabelSet('chexpert14').labels;
  for (const p of plan.patients) {
    const rng = new Prng(deriveSeed(o.seed, p.id));
    const anatomy: Anatomy = drawAnatomy(rng);
    let previous: Set<SynthFinding> | null = null;
    for (let s = 1; s <= p.studies; s++) {
      const has = drawFindings(rng, previous);
      previous = has;
      const labels = reportLabels(rng, has, labelNames);
      const image = new Uint8Array(o.imageSize * o.imageSize);
      renderStudy(image, o.imageSize, anatomy, has, rng);
      yield {
        split: plan.split.get(p.id)!,
        sample: { image, labels, subjectId: p.id, studyId: `${p.id}/study${s}`, path: `synth/${p.id}/study${s}/view1_frontal.png` },
      };
    }
  }
}

export { SYNTH_FINDINGS };
