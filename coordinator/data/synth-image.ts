import type { Prng } from '../../shared/random/generators.js';

/**
 * Chest-X-ray-like pictures drawn from a list of findings: a pure function of (findings, patient
 * anatomy, PRNG state), so `data synth` is deterministic per seed. Geometry is in unit
 * coordinates (x right, y down; the patient's left is the image's right, as on a PA film) and
 * scales to any size. Every finding has its own visual sign, jittered in place, size and
 * intensity so that a model must learn the sign rather than a pixel:
 *
 *   Enlarged Cardiomediastinum  wide bright upper mediastinum
 *   Cardiomegaly                heart shadow about 1.7x wider
 *   Lung Opacity                large soft haze in one lung
 *   Lung Lesion                 small sharp round nodule
 *   Edema                       bilateral perihilar haze plus short lateral lines (Kerley B)
 *   Consolidation               dense patchy cluster low in one lung
 *   Pneumonia                   many small spots high in one lung
 *   Atelectasis                 thick horizontal plate across one lower lung
 *   Pneumothorax                dark rim without markings at the lateral apex, thin pleural line
 *   Pleural Effusion            bright lower zone with a meniscus, blunted costophrenic angle
 *   Pleural Other               bright band along the lateral chest wall
 *   Fracture                    bright stepped segment on a lateral rib, outside the lung
 *   Support Devices             thin very bright lines (tube, wire) and a pacemaker box
 */
export const SYNTH_FINDINGS = [
  'Enlarged Cardiomediastinum',
  'Cardiomegaly',
  'Lung Opacity',
  'Lung Lesion',
  'Edema',
  'Consolidation',
  'Pneumonia',
  'Atelectasis',
  'Pneumothorax',
  'Pleural Effusion',
  'Pleural Other',
  'Fracture',
  'Support Devices',
] as const;
export type SynthFinding = (typeof SYNTH_FINDINGS)[number];

/** Per-patient anatomy, kept across that patient's studies. */
export interface Anatomy {
  scale: number;
  heart: number;
  lungDark: number;
  body: number;
}

export function drawAnatomy(rng: Prng): Anatomy {
  return { scale: rng.uniform(0.92, 1.04), heart: rng.uniform(0.9, 1.08), lungDark: rng.uniform(40, 55), body: rng.uniform(70, 90) };
}

class Canvas {
  readonly px: Float32Array;
  constructor(
    readonly size: number,
    /** Whole-picture offset and scale of this study (patient positioning). */
    private readonly ox: number,
    private readonly oy: number,
    private readonly sc: number,
  ) {
    this.px = new Float32Array(size * size);
  }

  /** Unit coordinates -> pixel coordinates, with the study's positioning applied. */
  private X(x: number): number {
    return (0.5 + (x - 0.5) * this.sc + this.ox) * this.size;
  }
  private Y(y: number): number {
    return (0.5 + (y - 0.5) * this.sc + this.oy) * this.size;
  }
  private R(r: number): number {
    return r * this.sc * this.size;
  }

  /** Add `v` inside an ellipse, fading over the outer `soft` fraction of its radius. */
  ellipse(cx: number, cy: number, rx: number, ry: number, v: number, soft = 0.15, clip?: (x: number, y: number) => boolean): void {
    const X = this.X(cx);
    const Y = this.Y(cy);
    const RX = Math.max(0.5, this.R(rx));
    const RY = Math.max(0.5, this.R(ry));
    this.fill(X - RX, Y - RY, X + RX, Y + RY, (x, y) => {
      const dx = (x - X) / RX;
      const dy = (y - Y) / RY;
      const d = Math.sqrt(dx * dx + dy * dy);
      if (d >= 1) return 0;
      if (clip && !clip(x / this.size, y / this.size)) return 0;
      return v * Math.min(1, (1 - d) / soft);
    });
  }

  /** Add a Gaussian blob of peak `v`. */
  blob(cx: number, cy: number, sigma: number, v: number): void {
    const X = this.X(cx);
    const Y = this.Y(cy);
    const S = Math.max(0.5, this.R(sigma));
    this.fill(X - 3 * S, Y - 3 * S, X + 3 * S, Y + 3 * S, (x, y) => v * Math.exp(-((x - X) ** 2 + (y - Y) ** 2) / (2 * S * S)));
  }

  /** Add `v` along a segment of half-width `w` (antialiased over one pixel). */
  line(x0: number, y0: number, x1: number, y1: number, w: number, v: number): void {
    const ax = this.X(x0);
    const ay = this.Y(y0);
    const bx = this.X(x1);
    const by = this.Y(y1);
    const W = Math.max(0.35, this.R(w));
    const dx = bx - ax;
    const dy = by - ay;
    const len2 = dx * dx + dy * dy || 1;
    this.fill(Math.min(ax, bx) - W - 1, Math.min(ay, by) - W - 1, Math.max(ax, bx) + W + 1, Math.max(ay, by) + W + 1, (x, y) => {
      const t = Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / len2));
      const d = Math.hypot(x - ax - t * dx, y - ay - t * dy);
      return v * Math.max(0, Math.min(1, W + 0.5 - d));
    });
  }

  /** Add `f(x, y)` (pixel-centre coordinates) over a bounding box clipped to the image. */
  fill(x0: number, y0: number, x1: number, y1: number, f: (x: number, y: number) => number): void {
    const S = this.size;
    const i0 = Math.max(0, Math.floor(x0));
    const i1 = Math.min(S - 1, Math.ceil(x1));
    const j0 = Math.max(0, Math.floor(y0));
    const j1 = Math.min(S - 1, Math.ceil(y1));
    for (let j = j0; j <= j1; j++)
      for (let i = i0; i <= i1; i++) {
        const v = f(i + 0.5, j + 0.5);
        if (v !== 0) this.px[j * S + i]! += v;
      }
  }

  /** Anatomy coordinates of a picture position (pixel / size), the inverse of X/Y. */
  unit(xf: number, yf: number): [number, number] {
    return [(xf - this.ox - 0.5) / this.sc + 0.5, (yf - this.oy - 0.5) / this.sc + 0.5];
  }
}

const LUNG = { cy: 0.47, rx: 0.15, ry: 0.28 };
const LUNG_SOFT = 0.12;
const lungCx = (side: number) => (side < 0 ? 0.31 : 0.69);

/** Draw one study's picture into `out` (size*size bytes). */
export function renderStudy(out: Uint8Array, size: number, anatomy: Anatomy, present: ReadonlySet<SynthFinding>, rng: Prng): void {
  const c = new Canvas(size, rng.uniform(-0.025, 0.025), rng.uniform(-0.025, 0.025), anatomy.scale * rng.uniform(0.97, 1.03));
  const j = (a: number) => rng.uniform(-a, a);
  const side = () => (rng.chance(0.5) ? -1 : 1);
  const inLung = (s: number) => (xf: number, yf: number) => lungWeight(s, xf, yf) > 0;
  /** How much of the lung's darkening a position has (its soft edge included), 0..1. */
  const lungWeight = (s: number, xf: number, yf: number) => {
    const [x, y] = c.unit(xf, yf);
    const d = Math.sqrt(((x - lungCx(s)) / LUNG.rx) ** 2 + ((y - LUNG.cy) / LUNG.ry) ** 2);
    return d >= 1 ? 0 : Math.min(1, (1 - d) / LUNG_SOFT);
  };

  // Anatomy: body, dark lungs, spine and mediastinum, heart, clavicles, faint ribs.
  c.ellipse(0.5, 0.56, 0.47, 0.52, anatomy.body, 0.25);
  for (const s of [-1, 1]) c.ellipse(lungCx(s), LUNG.cy, LUNG.rx, LUNG.ry, -anatomy.lungDark, LUNG_SOFT);
  c.line(0.5, 0.02, 0.5, 0.98, 0.035, 30);
  const cardiomegaly = present.has('Cardiomegaly');
  const heartRx = 0.11 * anatomy.heart * (cardiomegaly ? rng.uniform(1.6, 1.85) : 1);
  c.ellipse(0.54 + (cardiomegaly ? 0.02 : 0) + j(0.01), 0.62 + j(0.01), heartRx, 0.11 + j(0.008), 50 + j(6), 0.3);
  for (const s of [-1, 1]) {
    c.line(0.5 + s * 0.06, 0.2, 0.5 + s * 0.3, 0.15 + j(0.01), 0.012, 22);
    for (let k = 0; k < 6; k++) {
      const y = 0.25 + k * 0.075 + j(0.008);
      c.line(0.5 + s * 0.07, y, 0.5 + s * 0.33, y + 0.04, 0.008, 9);
    }
  }

  if (present.has('Enlarged Cardiomediastinum'))
    c.ellipse(0.5 + j(0.01), 0.36 + j(0.02), rng.uniform(0.1, 0.12), rng.uniform(0.15, 0.18), 45 + j(8), 0.35);
  if (present.has('Lung Opacity')) {
    const s = side();
    c.blob(lungCx(s) + j(0.04), rng.uniform(0.36, 0.56), rng.uniform(0.065, 0.08), 42 + j(8));
  }
  if (present.has('Lung Lesion')) {
    const s = side();
    const r = rng.uniform(0.045, 0.06);
    c.ellipse(lungCx(s) + j(0.06), rng.uniform(0.32, 0.58), r, r, 90 + j(10), 0.2);
  }
  if (present.has('Edema')) {
    const y = 0.46 + j(0.03);
    for (const s of [-1, 1]) {
      c.blob(0.5 + s * rng.uniform(0.12, 0.16), y, rng.uniform(0.06, 0.075), 32 + j(5));
      for (let k = 0; k < 3; k++) {
        const yy = 0.58 + k * 0.035 + j(0.01);
        const x0 = 0.5 + s * 0.3;
        c.line(x0, yy, x0 - s * 0.06, yy, 0.007, 45);
      }
    }
  }
  if (present.has('Consolidation')) {
    const s = side();
    const cx = lungCx(s) + j(0.04);
    const cy = rng.uniform(0.52, 0.62);
    const n = 4 + rng.int(3);
    for (let k = 0; k < n; k++) {
      const r = rng.uniform(0.03, 0.05);
      c.ellipse(cx + j(0.06), cy + j(0.05), r, r * rng.uniform(0.7, 1.2), 48 + j(6), 0.4, inLung(s));
    }
  }
  if (present.has('Pneumonia')) {
    const s = side();
    const cx = lungCx(s) + j(0.03);
    const cy = rng.uniform(0.3, 0.4);
    const n = 10 + rng.int(5);
    for (let k = 0; k < n; k++) {
      const r = rng.uniform(0.018, 0.026);
      c.ellipse(cx + j(0.08), cy + j(0.08), r, r, 70 + j(10), 0.5);
    }
  }
  if (present.has('Atelectasis')) {
    const s = side();
    const y = rng.uniform(0.55, 0.64);
    c.line(lungCx(s) - 0.13, y + j(0.02), lungCx(s) + 0.13, y + j(0.02), rng.uniform(0.024, 0.03), 65 + j(8));
  }
  if (present.has('Pneumothorax')) {
    // Crescent between the lung and a smaller lung shifted medially and down: no markings, darker.
    const s = side();
    const cx = lungCx(s);
    const shift = rng.uniform(0.05, 0.07);
    const inner = { cx: cx - s * shift, cy: LUNG.cy + shift, rx: LUNG.rx * 0.92, ry: LUNG.ry * 0.9 };
    c.fill(0, 0, size, size, (xp, yp) => {
      if (lungWeight(s, xp / size, yp / size) === 0) return 0;
      const [x, y] = c.unit(xp / size, yp / size);
      const d = Math.sqrt(((x - inner.cx) / inner.rx) ** 2 + ((y - inner.cy) / inner.ry) ** 2);
      if (d < 0.97) return 0;
      if (d < 1.03) return 40;
      return -45;
    });
  }
  if (present.has('Pleural Effusion')) {
    // Bright lower zone whose upper border (meniscus) climbs laterally: the angle is blunted.
    const sides = rng.chance(0.3) ? [-1, 1] : [side()];
    for (const s of sides) {
      const level = rng.uniform(0.58, 0.64);
      const cx = lungCx(s);
      c.fill(0, 0, size, size, (xp, yp) => {
        const w = lungWeight(s, xp / size, yp / size);
        if (w === 0) return 0;
        const [x, y] = c.unit(xp / size, yp / size);
        const lateral = Math.max(0, (x - cx) * s);
        const top = level - 1.2 * lateral;
        return y > top ? w * Math.min(1, (y - top) * 40) * (anatomy.lungDark + 15) : 0;
      });
    }
  }
  if (present.has('Pleural Other')) {
    const s = side();
    const x = 0.5 + s * 0.445;
    const y = rng.uniform(0.3, 0.45);
    c.line(x, y, x - s * 0.015, y + rng.uniform(0.22, 0.28), 0.022, 75 + j(8));
  }
  if (present.has('Fracture')) {
    const s = side();
    const x = 0.5 + s * rng.uniform(0.4, 0.43);
    const y = rng.uniform(0.28, 0.55);
    c.line(x - 0.05, y, x, y + 0.012, 0.018, 100);
    c.line(x + 0.005, y + 0.04, x + 0.055, y + 0.052, 0.018, 100);
  }
  if (present.has('Support Devices')) {
    const kind = rng.int(3);
    if (kind !== 1) {
      // Endotracheal / nasogastric tube down the midline.
      const x = 0.5 + j(0.02);
      c.line(x, 0.0, x + j(0.02), rng.uniform(0.4, 0.55), 0.006, 120);
    }
    if (kind !== 0) {
      // Pacemaker box high on the chest with its lead into the heart.
      const x = 0.22 + j(0.03);
      const y = 0.17 + j(0.02);
      c.ellipse(x, y, 0.035, 0.025, 140, 0.1);
      c.line(x, y, 0.56 + j(0.02), 0.64 + j(0.02), 0.006, 110);
    }
  }

  // Exposure and contrast differ between studies; quantum noise differs between pixels.
  const gain = rng.uniform(0.85, 1.15);
  const bias = 12 + rng.uniform(-8, 8);
  const sigma = rng.uniform(4, 7);
  const px = c.px;
  for (let i = 0; i < px.length; i++) {
    const v = bias + gain * px[i]! + sigma * rng.normal();
    out[i] = v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
  }
}
