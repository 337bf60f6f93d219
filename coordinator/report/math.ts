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
 * Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations: eigenvalues in
 * descending order and their unit eigenvectors (vectors[i] belongs to values[i]).
 */
export function symmetricEigen(A: readonly (readonly number[])[]): { values: number[]; vectors: number[][] } {
  const n = A.length;
  const a = A.map((r) => r.slice());
  const v: number[][] = A.map((_, i) => A.map((__, j) => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0,
      diag = 0;
    for (let p = 0; p < n; p++) {
      diag += a[p]![p]! ** 2;
      for (let q = p + 1; q < n; q++) off += a[p]![q]! ** 2;
    }
    if (off <= 1e-30 * Math.max(diag, 1e-300)) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = a[p]![q]!;
        if (apq === 0) continue;
        const theta = (a[q]![q]! - a[p]![p]!) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1),
          s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k]![p]!,
            akq = a[k]![q]!;
          a[k]![p] = c * akp - s * akq;
          a[k]![q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p]![k]!,
            aqk = a[q]![k]!;
          a[p]![k] = c * apk - s * aqk;
          a[q]![k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k]![p]!,
            vkq = v[k]![q]!;
          v[k]![p] = c * vkp - s * vkq;
          v[k]![q] = s * vkp + c * vkq;
        }
      }
  }
  const order = a.map((_, i) => i).sort((i, j) => a[j]![j]! - a[i]![i]!);
  return { values: order.map((i) => a[i]![i]!), vectors: order.map((i) => v.map((row) => row[i]!)) };
}

/**
 * Project rows onto their first two principal components. Block subspace iteration with a
 * Rayleigh-Ritz step on a handful of vectors (the top two converge at the rate of the gap to
 * the 7th eigenvalue, not the 3rd), the covariance applied implicitly as Xc^T (Xc V) in one
 * pass over the rows, so a 512-wide embedding never needs its 512x512 covariance.
 * Deterministic: fixed start vectors, and each component's sign chosen so that its
 * largest-magnitude entry is positive. The default iteration cap bounds the time on data with
 * no dominant directions (isotropic noise), where the top two are ill-defined anyway; the
 * result is then still an orthonormal projection and `explained` is measured, not assumed.
 */
export function pca2(rows: readonly (readonly number[])[], maxIter = 60, tol = 1e-9): Projection {
  const n = rows.length;
  if (n === 0) return { points: [], explained: [0, 0] };
  const d = rows[0]!.length;
  const mean = new Float64Array(d);
  for (const r of rows) for (let k = 0; k < d; k++) mean[k]! += r[k]! / n;
  const X = rows.map((r) => Float64Array.from(r, (x, k) => x - mean[k]!));
  let total = 0;
  for (const r of X) for (let k = 0; k < d; k++) total += r[k]! * r[k]!;
  const comps = Math.min(2, d);
  const block = Math.min(d, 6);

  const dot = (a: Float64Array, b: Float64Array) => {
    let s = 0;
    for (let k = 0; k < d; k++) s += a[k]! * b[k]!;
    return s;
  };
  // C V for all block vectors in one pass over the rows (C = Xc^T Xc, unnormalised).
  const covTimes = (V: Float64Array[]): Float64Array[] => {
    const out = V.map(() => new Float64Array(d));
    const proj = new Float64Array(V.length);
    for (const r of X) {
      for (let c = 0; c < V.length; c++) proj[c] = dot(r, V[c]!);
      for (let c = 0; c < V.length; c++) {
        const p = proj[c]!,
          o = out[c]!;
        if (p !== 0) for (let k = 0; k < d; k++) o[k]! += p * r[k]!;
      }
    }
    return out;
  };
  const orthonormalize = (vs: Float64Array[]): void => {
    for (let i = 0; i < vs.length; i++) {
      // Replacement candidates for a vector that collapses (rank-deficient data): the unit axes
      // in turn; at most d tries, and some axis is always outside the span of i < d vectors.
      for (let attempt = 0; ; attempt++) {
        const v = vs[i]!;
        const before = Math.sqrt(dot(v, v));
        for (let pass = 0; pass < 2; pass++)
          for (let j = 0; j < i; j++) {
            const p = dot(v, vs[j]!);
            for (let k = 0; k < d; k++) v[k]! -= p * vs[j]![k]!;
          }
        const norm = Math.sqrt(dot(v, v));
        // Relative test: what is left after removing the other directions may be rounding
        // noise, which normalised would not be orthogonal to them.
        if (norm > 1e-10 * before && norm > 1e-150) {
          for (let k = 0; k < d; k++) v[k]! /= norm;
          break;
        }
        if (attempt >= d) throw new Error(`pca2: cannot build ${vs.length} orthonormal vectors in ${d} dimensions`);
        v.fill(0);
        v[(i + attempt) % d] = 1;
      }
    }
  };
  const combine = (V: Float64Array[], Q: number[][]): Float64Array[] =>
    Q.map((q) => {
      const out = new Float64Array(d);
      q.forEach((w, c) => {
        for (let k = 0; k < d; k++) out[k]! += w * V[c]![k]!;
      });
      return out;
    });

  let V: Float64Array[] = Array.from({ length: block }, (_, c) =>
    Float64Array.from({ length: d }, (_, k) => Math.sin(1 + k * 1.618 + c * 2.718)),
  );
  orthonormalize(V);
  let ritz: Float64Array[] = V.slice(0, comps);
  for (let it = 0; it < maxIter; it++) {
    const W = covTimes(V);
    // Rayleigh-Ritz: the best approximations to the top eigenvectors within span(V).
    const H = V.map((vi) => W.map((wj) => dot(vi, wj)));
    for (let i = 0; i < block; i++) for (let j = 0; j < i; j++) H[i]![j] = H[j]![i] = (H[i]![j]! + H[j]![i]!) / 2;
    const { vectors } = symmetricEigen(H);
    const next = combine(V, vectors.slice(0, comps));
    let change = 0;
    for (let c = 0; c < comps; c++) change = Math.max(change, 1 - Math.abs(dot(next[c]!, ritz[c]!)));
    ritz = next;
    if (it > 0 && change < tol) break;
    V = combine(W, vectors);
    orthonormalize(V);
  }
  for (const v of ritz) {
    let best = 0;
    for (let k = 0; k < d; k++) if (Math.abs(v[k]!) > Math.abs(v[best]!)) best = k;
    if (v[best]! < 0) for (let k = 0; k < d; k++) v[k] = -v[k]!;
  }
  const points = X.map((r) => {
    const p: [number, number] = [0, 0];
    for (let c = 0; c < comps; c++) p[c] = dot(r, ritz[c]!);
    return p;
  });
  let v0 = 0,
    v1 = 0;
  for (const p of points) {
    v0 += p[0] ** 2;
    v1 += p[1] ** 2;
  }
  return { points, explained: total > 0 ? [v0 / total, v1 / total] : [0, 0] };
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
    const lo = Math.floor(b * size),
      hi = Math.min(pts.length, Math.floor((b + 1) * size));
    if (hi <= lo) continue;
    let mn = lo,
      mx = lo;
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
  let acc = 0,
    count = 0;
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
