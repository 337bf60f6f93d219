import { UserError } from '../util/errors.js';
import { keyedUniform } from '../random/generators.js';

/**
 * Training-time image augmentation: what is drawn for each sample, and from which ranges
 * (docs/training.md, "Augmentation"). Every draw is a hash of (seed, epoch, dataset index, draw
 * number), not a stream, so a sample is augmented the same way whichever batch position, rank or
 * worker count it lands in, and differently in every epoch.
 */

export const AUGMENT_LEVELS = ['none', 'light', 'strong'] as const;
export type AugmentLevel = (typeof AUGMENT_LEVELS)[number];

export interface AugmentPolicy {
  /** Random resized crop: the crop's area as a fraction of the image, uniform in [lo, hi]. */
  readonly scale: readonly [number, number];
  /** The crop's aspect ratio (width / height), log-uniform in [lo, hi]; the crop is resized to the full image. */
  readonly ratio: readonly [number, number];
  /** Rotation in degrees, uniform in [-rotate, rotate]. */
  readonly rotate: number;
  /** Translation per axis as a fraction of the side, uniform in [-translate, translate]. */
  readonly translate: number;
  /** Brightness factor uniform in [1 - brightness, 1 + brightness] (torchvision ColorJitter's). */
  readonly brightness: number;
  /** Contrast factor uniform in [1 - contrast, 1 + contrast] about the image's mean (ColorJitter's). */
  readonly contrast: number;
  /** Probability of a horizontal flip: 0 in every preset, since laterality matters in a chest film. */
  readonly hflip: number;
}

/**
 * The presets. `light` stays within what positioning varies between studies anyway; `strong` is
 * about twice that. Neither flips: the heart, the aortic knob and a left-sided effusion are
 * left-sided findings.
 */
export const AUGMENT_PRESETS: Readonly<Record<Exclude<AugmentLevel, 'none'>, AugmentPolicy>> = {
  light: { scale: [0.85, 1], ratio: [0.95, 1 / 0.95], rotate: 5, translate: 0.03, brightness: 0.1, contrast: 0.1, hflip: 0 },
  strong: { scale: [0.7, 1], ratio: [0.85, 1 / 0.85], rotate: 10, translate: 0.06, brightness: 0.2, contrast: 0.2, hflip: 0 },
};

/** The policy of `--augment LEVEL` with `--augment-hflip P`, or null for none. */
export function augmentPolicy(level: string, hflip = 0): AugmentPolicy | null {
  if (!(AUGMENT_LEVELS as readonly string[]).includes(level))
    throw new UserError(`--augment '${level}': expected one of ${AUGMENT_LEVELS.join(', ')}`);
  if (!(hflip >= 0 && hflip <= 1)) throw new UserError(`--augment-hflip must be a probability in [0, 1], got ${hflip}`);
  if (level === 'none') {
    if (hflip > 0) throw new UserError('--augment-hflip needs --augment light or strong');
    return null;
  }
  return { ...AUGMENT_PRESETS[level as Exclude<AugmentLevel, 'none'>], hflip };
}

/** One sample's draw: an affine map from output to source pixels and an intensity change. */
export interface AugmentDraw {
  /** Source x = ax * x + bx * y + cx (and y likewise), x, y the output pixel's integer coordinates. */
  readonly ax: number;
  readonly bx: number;
  readonly cx: number;
  readonly ay: number;
  readonly by: number;
  readonly cy: number;
  readonly brightness: number;
  readonly contrast: number;
}

/** Separates these draws from every other keyed draw of the same (seed, epoch, index) (label smoothing's). */
const STREAM = 0x61756731;

/**
 * The draw for dataset row `index` in `epoch` of a run with `seed`, for square images of side
 * `size`. Geometry in units of the side, about the image centre: the crop (area s, ratio r) has
 * sides sqrt(s r) by sqrt(s / r) (at most 1) and a centre uniform where it fits, then is rotated
 * and shifted; output pixel centres map through it into the source.
 */
export function augmentDraw(policy: AugmentPolicy, seed: number, epoch: number, index: number, size: number): AugmentDraw {
  const u = (k: number) => keyedUniform(STREAM, seed, epoch, index, k);
  const between = (lo: number, hi: number, k: number) => lo + (hi - lo) * u(k);
  const area = between(policy.scale[0], policy.scale[1], 0);
  const ratio = Math.exp(between(Math.log(policy.ratio[0]), Math.log(policy.ratio[1]), 1));
  const w = Math.min(1, Math.sqrt(area * ratio));
  const h = Math.min(1, Math.sqrt(area / ratio));
  const ox = between(-(1 - w) / 2, (1 - w) / 2, 2) + between(-policy.translate, policy.translate, 4);
  const oy = between(-(1 - h) / 2, (1 - h) / 2, 3) + between(-policy.translate, policy.translate, 5);
  const theta = (between(-policy.rotate, policy.rotate, 6) * Math.PI) / 180;
  const flip = u(7) < policy.hflip ? -1 : 1;
  const cos = Math.cos(theta);
  const sin = Math.sin(theta);
  // Output pixel x -> unit coordinate ux = (x + 0.5) / size - 0.5 -> crop (flip * w * ux, h * uy) ->
  // rotated and shifted source unit coordinate -> source pixel (unit + 0.5) * size - 0.5.
  const sx = (flip * w) / size;
  const sy = h / size;
  const ax = cos * sx;
  const bx = -sin * sy;
  const ay = sin * sx;
  const by = cos * sy;
  const u0 = 0.5 / size - 0.5;
  const cx = (ax * u0 * size + bx * u0 * size + ox + 0.5) * size - 0.5;
  const cy = (ay * u0 * size + by * u0 * size + oy + 0.5) * size - 0.5;
  return {
    ax: ax * size,
    bx: bx * size,
    cx,
    ay: ay * size,
    by: by * size,
    cy,
    brightness: between(1 - policy.brightness, 1 + policy.brightness, 8),
    contrast: between(1 - policy.contrast, 1 + policy.contrast, 9),
  };
}
