/**
 * The numbers behind the report's charts, as pure functions: cosine similarities, a 2-D PCA
 * projection, curve downsampling and axis ticks.
 */

/** Cosine similarity of every pair of rows; a zero row has similarity 0 with everything. */
export function cosineMatrix(rows: readonly (readonly number[])[]): number[][] {
  const norms = rows.map((r) => Math.sqrt(r.reduce((s, x) => s + x * x, 0)));
  return rows.map((a, i) =>
    rows.map((b, j) => {
      if (norms[i] === 0 || norms[j] === 0) return 0;
      let dot = 0;
      for (let k = 0; k < a.length; k++) dot += a[k]! * b[k]!;
      // Clamp: rounding can push |cos| a hair past 1.
      return Math.max(-1, Math.min(1, dot / (norms[i]! * norms[j]!)));
    }),
  );
}

export interface Projection {
  /** n points, [x, y] = coordinates on the first two principal components. */
  points: [number, number][];
  /** Fraction of the total variance along each of the two components. */
  explained: [number, number];
}

/**
 * Project rows onto their first two principal components. Orthogonal (subspace) iteration on
 * the covariance, applied implicitly as Xc^T (Xc v) so a 512-wide embedding never needs its
 * 512x512 covariance. Deterministic: fixed start vectors, and each component's sign chosen so
 * that its largest-magnitude entry is positive.
 */
export function pca2(rows: readonly (readonly number[])[], maxIter = 500, tol = 1e-10): Projection {
  const n = rows.length;
  if (n === 0) return { points: [], explained: [0, 0] };
  const d = rows[0]!.length;
  const mean = new Float64Array(d);
  for (const r of rows) for (let k = 0; k < d; k++) mean[k]! += r[k]! / n;
  const X = rows.map((r) => Float64Array.from(r, (x, k) => x - mean[k]!));
  let total = 0;
  for (const r of X) for (let k = 0; k < d; k++) total += r[k]! * r[k]!;
  const comps = Math.min(2, d);

  // Covariance times v (unnormalised: Xc^T Xc v).
  const covTimes = (v: Float64Array): Float64Array => {
    const out = new Float64Array(d);
    for (const r of X) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += r[k]! * v[k]!;
      if (dot !== 0) for (let k = 0; k < d; k++) out[k]! += dot * r[k]!;
    }
    return out;
  };
  const orthonormalize = (vs: Float64Array[]): void => {
    for (let i = 0; i < vs.length; i++) {
      for (let j = 0; j < i; j++) {
        let dot = 0;
        for (let k = 0; k < d; k++) dot += vs[i]![k]! * vs[j]![k]!;
        for (let k = 0; k < d; k++) vs[i]![k]! -= dot * vs[j]![k]!;
      }
      let norm = 0;
      for (let k = 0; k < d; k++) norm += vs[i]![k]! ** 2;
      norm = Math.sqrt(norm);
      if (norm < 1e-300) {
        // Degenerate (rank-deficient) data: any unit vector orthogonal to the others will do.
        vs[i]!.fill(0);
        vs[i]![i % d] = 1;
        if (i > 0) orthonormalize(vs.slice(0, i + 1));
      } else for (let k = 0; k < d; k++) vs[i]![k]! /= norm;
    }
  };
  // Fixed, generic start vectors (not axis-aligned, so no component is missed by symmetry).
  let V: Float64Array[] = Array.from({ length: comps }, (_, c) => Float64Array.from({ length: d }, (_, k) => Math.sin(1 + k * 1.618 + c * 2.718)));
  orthonormalize(V);
  for (let it = 0; it < maxIter; it++) {
    const W = V.map(covTimes);
    orthonormalize(W);
    let change = 0;
    for (let c = 0; c < comps; c++) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += W[c]![k]! * V[c]![k]!;
      change = Math.max(change, 1 - Math.abs(dot));
    }
    V = W;
    if (change < tol) break;
  }
  // Rayleigh-Ritz on the 2-D subspace, so the two directions are the eigenvectors themselves
  // even when the top eigenvalues are close and iteration left them mixed.
  if (comps === 2) {
    const CV = V.map(covTimes);
    const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, k) => s + x * b[k]!, 0);
    const a = dot(V[0]!, CV[0]!), b = dot(V[0]!, CV[1]!), c = dot(V[1]!, CV[1]!);
    const theta = 0.5 * Math.atan2(2 * b, a - c);
    const cs = Math.cos(theta), sn = Math.sin(theta);
    const v0 = V[0]!.map((x, k) => cs * x + sn * V[1]![k]!);
    const v1 = V[0]!.map((x, k) => -sn * x + cs * V[1]![k]!);
    V = [v0, v1];
    if (dot(v1, covTimes(v1)) > dot(v0, covTimes(v0))) V = [v1, v0];
  }
  for (const v of V) {
    let best = 0;
    for (let k = 0; k < d; k++) if (Math.abs(v[k]!) > Math.abs(v[best]!)) best = k;
    if (v[best]! < 0) for (let k = 0; k < d; k++) v[k] = -v[k]!;
  }
  const points = X.map((r) => {
    const p: [number, number] = [0, 0];
    for (let c = 0; c < comps; c++) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += r[k]! * V[c]![k]!;
      p[c] = dot;
    }
    return p;
  });
  const variance = [0, 0];
  for (const p of points) {
    variance[0]! += p[0] ** 2;
    variance[1]! += p[1] ** 2;
  }
  const explained: [number, number] = total > 0 ? [variance[0]! / total, variance[1]! / total] : [0, 0];
  return { points, explained };
}

/**
 * Downsample a curve to about `buckets` buckets keeping each bucket's first, minimum and maximum
 * point, so loss spikes survive (averaging would hide exactly the steps an operator looks for).
 * Points with a non-finite y are dropped.
 */
export function downsampleMinMax(xs: readonly number[], ys: readonly (number | null)[], buckets: number): [number, number][] {
  const pts: [number, number][] = [];
  for (let i = 0; i < xs.length; i++) {
    const y = ys[i];
    if (typeof y === 'number' && Number.isFinite(y)) pts.push([xs[i]!, y]);
  }
  if (pts.length <= buckets * 3) return pts;
  const out: [number, number][] = [];
  const size = pts.length / buckets;
  for (let b = 0; b < buckets; b++) {
    const lo = Math.floor(b * size), hi = Math.min(pts.length, Math.floor((b + 1) * size));
    if (hi <= lo) continue;
    let mn = lo, mx = lo;
    for (let i = lo; i < hi; i++) {
      if (pts[i]![1] < pts[mn]![1]) mn = i;
      if (pts[i]![1] > pts[mx]![1]) mx = i;
    }
    for (const i of [...new Set([lo, mn, mx, hi - 1])].sort((p, q) => p - q)) out.push(pts[i]!);
  }
  return out;
}

/** Exponential moving average (debiased as in TensorBoard's smoothing), skipping non-finite values. */
export function ema(ys: readonly (number | null)[], weight: number): (number | null)[] {
  let acc = 0, count = 0;
  return ys.map((y) => {
    if (typeof y !== 'number' || !Number.isFinite(y)) return null;
    acc = acc * weight + (1 - weight) * y;
    count++;
    return acc / (1 - weight ** count);
  });
}

/** About `count` round tick values covering [lo, hi] (1, 2, 5 times a power of ten). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}
