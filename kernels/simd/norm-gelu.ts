import { addTo, assembleModule, Body, countdown, instantiateWith, wasmApi, type ValType } from '../wasm-asm.js';

/**
 * LayerNorm and exact GELU, forward and backward, as WebAssembly SIMD kernels for
 * tfjs-backend-wasm. In tfjs each is a chain of small kernels (moments, rsqrt, sub, mul, add; erf,
 * add, mul; and as many again in the backward), each writing a full-size output; here each is one
 * pass (GELU) or one row at a time in L1 (LayerNorm) over the data, in the backend's own heap (the
 * module imports its WebAssembly.Memory, as ./gemm.ts does).
 *
 * The math is model/layers.ts's, operation for operation, in f32:
 * - layerNorm: mean = sum(x)/C; var = sum((x-mean)^2)/C (two passes, as tf.moments);
 *   rstd = 1/sqrt(var + eps); y = ((x-mean)*rstd)*gamma + beta. The backward recomputes
 *   xhat = (x-mean)*rstd from the saved per-row mean and rstd (the same bits as the forward),
 *   dxhat = dy*gamma, m1 = sum(dxhat)/C, m2 = sum(dxhat*xhat)/C,
 *   dx = ((dxhat - m1) - xhat*m2)*rstd, dgamma = sum over rows of dy*xhat, dbeta = sum of dy.
 * - gelu: cdf = 0.5*(1 + erf(x*SQRT1_2)), y = x*cdf; dx = dy*(cdf + x*pdf) with
 *   pdf = exp((x*x)*-0.5)*INV_SQRT_2PI.
 * Sums run four lanes wide in increasing index, lanes combined as (l0+l1)+(l2+l3), then the
 * row's last cols%4 elements in order; dgamma/dbeta add rows in increasing order. One thread,
 * fixed order: the same bits on every run. Other backends sum in other orders, so they agree to
 * rounding, not bit for bit.
 *
 * erf: the rational approximation of XLA/Eigen's fp32 erf (x*P(x^2)/Q(x^2): an odd numerator of
 * degree 13 over an even denominator of degree 8, input clamped to [-4, 4], where erf is +-1 in
 * f32); evaluated in f32 its error is
 * at most 4e-7 over [-8, 8] against a double-precision reference (test/kernels/simd-norm-gelu.test.ts
 * asserts < 5e-7; that is ~7 ulp of values just below 1, whose ulp is 6e-8).
 * tfjs's own Erf kernels use Abramowitz-Stegun 7.1.26, max error 1.5e-7. The result is clamped
 * to [-1, 1] so that cdf stays a probability.
 * exp: Cephes' expf (argument reduction by ln 2 split in two constants, degree-5 polynomial,
 * 2^n built in the exponent bits), relative error ~1e-7. Its argument here is -x^2/2 <= 0,
 * clamped below at -87 so 2^n stays a normal number; exp(-87) ~ 1.6e-38 makes x*pdf 0 to f32
 * precision anyway.
 */

const I = 'i32';
const F = 'f32';
const V = 'v128';

/** Element operations in one of two widths: four lanes (v128) or one (f32), for the row tails. */
interface Width {
  bytes: number;
  load(f: Body, offset?: number): void;
  store(f: Body): void;
  add(f: Body): void;
  sub(f: Body): void;
  mul(f: Body): void;
}
const VEC: Width = {
  bytes: 16,
  load: (f, o = 0) => f.v128Load(o),
  store: (f) => f.v128Store(),
  add: (f) => f.f32x4Add(),
  sub: (f) => f.f32x4Sub(),
  mul: (f) => f.f32x4Mul(),
};
const ONE: Width = {
  bytes: 4,
  load: (f, o = 0) => f.f32Load(o),
  store: (f) => f.f32Store(),
  add: (f) => f.f32Add(),
  sub: (f) => f.f32Sub(),
  mul: (f) => f.f32Mul(),
};

/** Pushes (l0 + l1) + (l2 + l3) of a v128 local. */
function hsum(f: Body, v: number): void {
  f.get(v).f32x4ExtractLane(0).get(v).f32x4ExtractLane(1).f32Add();
  f.get(v).f32x4ExtractLane(2).get(v).f32x4ExtractLane(3).f32Add();
  f.f32Add();
}

/**
 * Runs `inner(width)` over one row: cols >> 2 times four lanes wide, then cols & 3 times one lane.
 * `count` is a scratch i32 local; the caller's pointer locals advance inside `inner`.
 */
function overRow(f: Body, nv: number, tail: number, count: number, inner: (w: Width) => void, between?: () => void): void {
  f.get(nv).set(count);
  countdown(f, count, () => inner(VEC));
  between?.();
  f.get(tail).set(count);
  countdown(f, count, () => inner(ONE));
}

/**
 * layerNorm(x, gamma, beta, y, mean, rstd, rows, cols, eps): x, y [rows, cols]; gamma, beta [cols];
 * mean, rstd [rows] (what the backward needs). Offsets in bytes.
 */
function layerNormBody(): Body {
  const f = new Body([I, I, I, I, I, I, I, I, F]);
  const [x, g, b, y, meanOut, rstdOut, rows, cols, eps] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const nv = f.local(I);
  const tail = f.local(I);
  const count = f.local(I);
  const r = f.local(I);
  const px = f.local(I);
  const pg = f.local(I);
  const pb = f.local(I);
  const colsF = f.local(F);
  const sum = f.local(F);
  const meanS = f.local(F);
  const rstdS = f.local(F);
  const dS = f.local(F);
  const acc = f.local(V);
  const meanV = f.local(V);
  const rstdV = f.local(V);
  const dV = f.local(V);
  f.get(cols).i32Const(2).i32ShrU().set(nv);
  f.get(cols).i32Const(3).i32And().set(tail);
  f.get(cols).f32ConvertI32U().set(colsF);
  f.get(rows).set(r);
  countdown(f, r, () => {
    // mean
    f.v128Zero().set(acc);
    f.get(x).set(px);
    f.get(nv).set(count);
    countdown(f, count, () => {
      f.get(acc).get(px).v128Load().f32x4Add().set(acc);
      addTo(f, px, 16);
    });
    hsum(f, acc);
    f.set(sum);
    f.get(tail).set(count);
    countdown(f, count, () => {
      f.get(sum).get(px).f32Load().f32Add().set(sum);
      addTo(f, px, 4);
    });
    f.get(sum).get(colsF).f32Div().tee(meanS).f32x4Splat().set(meanV);
    // variance about the mean, then rstd
    f.v128Zero().set(acc);
    f.get(x).set(px);
    f.get(nv).set(count);
    countdown(f, count, () => {
      f.get(px).v128Load().get(meanV).f32x4Sub().set(dV);
      f.get(acc).get(dV).get(dV).f32x4Mul().f32x4Add().set(acc);
      addTo(f, px, 16);
    });
    hsum(f, acc);
    f.set(sum);
    f.get(tail).set(count);
    countdown(f, count, () => {
      f.get(px).f32Load().get(meanS).f32Sub().set(dS);
      f.get(sum).get(dS).get(dS).f32Mul().f32Add().set(sum);
      addTo(f, px, 4);
    });
    f.f32Const(1).get(sum).get(colsF).f32Div().get(eps).f32Add().f32Sqrt().f32Div().tee(rstdS).f32x4Splat().set(rstdV);
    // y = xhat*gamma + beta
    f.get(x).set(px);
    f.get(g).set(pg);
    f.get(b).set(pb);
    overRow(f, nv, tail, count, (w) => {
      const [m, s] = w === VEC ? [meanV, rstdV] : [meanS, rstdS];
      f.get(y);
      f.get(px);
      w.load(f);
      f.get(m);
      w.sub(f);
      f.get(s);
      w.mul(f);
      f.get(pg);
      w.load(f);
      w.mul(f);
      f.get(pb);
      w.load(f);
      w.add(f);
      w.store(f);
      for (const p of [px, pg, pb, y]) addTo(f, p, w.bytes);
    });
    f.get(meanOut).get(meanS).f32Store();
    f.get(rstdOut).get(rstdS).f32Store();
    addTo(f, meanOut, 4);
    addTo(f, rstdOut, 4);
    f.get(px).set(x);
  });
  return f;
}

/**
 * layerNormGrad(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, cols): dy, x, dx [rows, cols];
 * gamma, dgamma, dbeta [cols]; mean, rstd [rows] from layerNorm.
 */
function layerNormGradBody(): Body {
  const f = new Body([I, I, I, I, I, I, I, I, I, I]);
  const [dy, x, g, meanIn, rstdIn, dx, dg, db, rows, cols] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const nv = f.local(I);
  const tail = f.local(I);
  const count = f.local(I);
  const r = f.local(I);
  const px = f.local(I);
  const pdy = f.local(I);
  const pg = f.local(I);
  const pdg = f.local(I);
  const pdb = f.local(I);
  const colsF = f.local(F);
  const s1 = f.local(F);
  const s2 = f.local(F);
  const meanS = f.local(F);
  const rstdS = f.local(F);
  const m1S = f.local(F);
  const m2S = f.local(F);
  const xhS = f.local(F);
  const dyS = f.local(F);
  const dS = f.local(F);
  const s1V = f.local(V);
  const s2V = f.local(V);
  const meanV = f.local(V);
  const rstdV = f.local(V);
  const m1V = f.local(V);
  const m2V = f.local(V);
  const xhV = f.local(V);
  const dyV = f.local(V);
  const dV = f.local(V);
  f.get(cols).i32Const(2).i32ShrU().set(nv);
  f.get(cols).i32Const(3).i32And().set(tail);
  f.get(cols).f32ConvertI32U().set(colsF);
  // dgamma, dbeta accumulate over rows from zero.
  f.get(dg).set(pdg);
  f.get(db).set(pdb);
  f.get(cols).set(count);
  countdown(f, count, () => {
    f.get(pdg).f32Const0().f32Store();
    f.get(pdb).f32Const0().f32Store();
    addTo(f, pdg, 4);
    addTo(f, pdb, 4);
  });
  const xhat = (w: Width) => {
    const [m, s, xh] = w === VEC ? [meanV, rstdV, xhV] : [meanS, rstdS, xhS];
    f.get(px);
    w.load(f);
    f.get(m);
    w.sub(f);
    f.get(s);
    w.mul(f);
    f.set(xh);
  };
  f.get(rows).set(r);
  countdown(f, r, () => {
    f.get(meanIn).f32Load().tee(meanS).f32x4Splat().set(meanV);
    f.get(rstdIn).f32Load().tee(rstdS).f32x4Splat().set(rstdV);
    // m1, m2 and this row's share of dgamma, dbeta
    f.v128Zero().set(s1V);
    f.v128Zero().set(s2V);
    f.get(x).set(px);
    f.get(dy).set(pdy);
    f.get(g).set(pg);
    f.get(dg).set(pdg);
    f.get(db).set(pdb);
    overRow(
      f,
      nv,
      tail,
      count,
      (w) => {
        const [xh, dyl, d, a1, a2] = w === VEC ? [xhV, dyV, dV, s1V, s2V] : [xhS, dyS, dS, s1, s2];
        xhat(w);
        f.get(pdy);
        w.load(f);
        f.tee(dyl);
        f.get(pg);
        w.load(f);
        w.mul(f);
        f.set(d);
        f.get(a1).get(d);
        w.add(f);
        f.set(a1);
        f.get(a2).get(d).get(xh);
        w.mul(f);
        w.add(f);
        f.set(a2);
        f.get(pdg).get(pdg);
        w.load(f);
        f.get(dyl).get(xh);
        w.mul(f);
        w.add(f);
        w.store(f);
        f.get(pdb).get(pdb);
        w.load(f);
        f.get(dyl);
        w.add(f);
        w.store(f);
        for (const p of [px, pdy, pg, pdg, pdb]) addTo(f, p, w.bytes);
      },
      () => {
        // The row's tail adds on to the lanes' sums.
        hsum(f, s1V);
        f.set(s1);
        hsum(f, s2V);
        f.set(s2);
      },
    );
    f.get(s1).get(colsF).f32Div().tee(m1S).f32x4Splat().set(m1V);
    f.get(s2).get(colsF).f32Div().tee(m2S).f32x4Splat().set(m2V);
    // dx
    f.get(x).set(px);
    f.get(dy).set(pdy);
    f.get(g).set(pg);
    overRow(f, nv, tail, count, (w) => {
      const [xh, d, m1, m2, s] = w === VEC ? [xhV, dV, m1V, m2V, rstdV] : [xhS, dS, m1S, m2S, rstdS];
      xhat(w);
      f.get(pdy);
      w.load(f);
      f.get(pg);
      w.load(f);
      w.mul(f);
      f.set(d);
      f.get(dx);
      f.get(d).get(m1);
      w.sub(f);
      f.get(xh).get(m2);
      w.mul(f);
      w.sub(f);
      f.get(s);
      w.mul(f);
      w.store(f);
      for (const p of [px, pdy, pg, dx]) addTo(f, p, w.bytes);
    });
    addTo(f, meanIn, 4);
    addTo(f, rstdIn, 4);
    f.get(px).set(x);
    f.get(pdy).set(dy);
  });
  return f;
}

// XLA/Eigen's fp32 erf: erf(x) ~ x*P(x^2)/Q(x^2) on [-4, 4].
const ERF_P = [
  -2.72614225801306e-10, 2.77068142495902e-8, -2.10102402082508e-6, -5.69250639462346e-5, -7.34990630326855e-4, -2.95459980854025e-3,
  -1.60960333262415e-2,
];
const ERF_Q = [-1.45660718464996e-5, -2.13374055278905e-4, -1.68282697438203e-3, -7.37332916720468e-3, -1.42647390514189e-2];
// Cephes expf.
const LOG2E = 1.4426950408889634;
const LN2_HI = 0.693359375;
const LN2_LO = -2.1219444e-4;
const EXP_P = [1.98756915e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
const EXP_MIN = -87;
// n + 2^23 + 127 is exact for the integers n in [-126, 0] exp meets: its f32 bits are 0x4B000000 +
// n + 127, so shifted left by 23 they are 2^n's (the 0x4B000000 falls off the top), two
// instructions where trunc_sat (several on x64), add 127 and shift were five or more.
const EXP_BIAS_SHIFTER = 2 ** 23 + 127;
const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** v128 temporaries the element math uses. */
export interface Temps {
  c: number;
  x2: number;
  p: number;
  q: number;
  cdf: number;
}

export function temps(f: Body): Temps {
  return { c: f.local(V), x2: f.local(V), p: f.local(V), q: f.local(V), cdf: f.local(V) };
}

/** Horner: acc = (...(x2*c0 + c1)*x2 + c2 ...); leaves nothing, result in `acc`. */
function horner(f: Body, coeffs: readonly number[], x2: number, acc: number): void {
  f.get(x2).f32x4Const(coeffs[0]!).f32x4Mul().f32x4Const(coeffs[1]!).f32x4Add().set(acc);
  for (const c of coeffs.slice(2)) f.get(x2).get(acc).f32x4Mul().f32x4Const(c).f32x4Add().set(acc);
}

/** Pushes erf of the vector on top of the stack (uses t.c, t.x2, t.p, t.q). */
function erfOf(f: Body, t: Temps): void {
  f.f32x4Const(4).f32x4Pmin().f32x4Const(-4).f32x4Pmax().set(t.c);
  f.get(t.c).get(t.c).f32x4Mul().set(t.x2);
  horner(f, ERF_P, t.x2, t.p);
  horner(f, ERF_Q, t.x2, t.q);
  f.get(t.c).get(t.p).f32x4Mul().get(t.q).f32x4Div();
  f.f32x4Const(1).f32x4Pmin().f32x4Const(-1).f32x4Pmax();
}

/** cdf = 0.5*(1 + erf(x*SQRT1_2)) of v128 local x, into t.cdf. */
function cdfOf(f: Body, x: number, t: Temps): void {
  f.get(x).f32x4Const(SQRT1_2).f32x4Mul();
  erfOf(f, t);
  f.f32x4Const(1).f32x4Add().f32x4Const(0.5).f32x4Mul().set(t.cdf);
}

/** Pushes pdf = exp((x*x)*-0.5)*INV_SQRT_2PI of v128 local x (uses t.c, t.x2, t.p, t.q). */
function pdfOf(f: Body, x: number, t: Temps): void {
  const [a, n, r, y] = [t.c, t.x2, t.p, t.q];
  f.get(x).get(x).f32x4Mul().f32x4Const(-0.5).f32x4Mul().f32x4Const(EXP_MIN).f32x4Pmax().set(a);
  f.get(a).f32x4Const(LOG2E).f32x4Mul().f32x4Nearest().set(n);
  f.get(a).get(n).f32x4Const(LN2_HI).f32x4Mul().f32x4Sub();
  f.get(n).f32x4Const(LN2_LO).f32x4Mul().f32x4Sub().set(r);
  f.get(r).f32x4Const(EXP_P[0]!).f32x4Mul().f32x4Const(EXP_P[1]!).f32x4Add().set(y);
  for (const c of EXP_P.slice(2)) f.get(y).get(r).f32x4Mul().f32x4Const(c).f32x4Add().set(y);
  // y*r^2 + r + 1, times 2^n (n in [-126, 0]: (n + 127) << 23 is its f32 bit pattern)
  f.get(y).get(r).get(r).f32x4Mul().f32x4Mul().get(r).f32x4Add().f32x4Const(1).f32x4Add();
  f.get(n).f32x4Const(EXP_BIAS_SHIFTER).f32x4Add().i32Const(23).i32x4Shl();
  f.f32x4Mul();
  f.f32x4Const(INV_SQRT_2PI).f32x4Mul();
}

/** dst = the first `tail` (1..3) floats at src in the low lanes, zeros above. */
export function loadPartial(f: Body, src: number, tail: number, dst: number): void {
  f.v128Zero().get(src).f32Load(0).f32x4ReplaceLane(0).set(dst);
  f.get(tail)
    .i32Const(1)
    .i32GtU()
    .if(() => {
      f.get(dst).get(src).f32Load(4).f32x4ReplaceLane(1).set(dst);
    });
  f.get(tail)
    .i32Const(2)
    .i32GtU()
    .if(() => {
      f.get(dst).get(src).f32Load(8).f32x4ReplaceLane(2).set(dst);
    });
}

/** The low `tail` (1..3) lanes of v128 local v to dst. */
export function storePartial(f: Body, dst: number, tail: number, v: number): void {
  f.get(dst).get(v).f32x4ExtractLane(0).f32Store(0);
  f.get(tail)
    .i32Const(1)
    .i32GtU()
    .if(() => {
      f.get(dst).get(v).f32x4ExtractLane(1).f32Store(4);
    });
  f.get(tail)
    .i32Const(2)
    .i32GtU()
    .if(() => {
      f.get(dst).get(v).f32x4ExtractLane(2).f32Store(8);
    });
}

/**
 * An elementwise kernel over n floats: `inputs` pointer parameters read, parameter `out` written,
 * `math` computes the output vector from the input vectors (v128 locals) into `res`. The last
 * n % 4 elements go through the same vector math in partial vectors, so every element gets the
 * same operations.
 */
function elementwiseBody(nInputs: number, math: (f: Body, xs: number[], t: Temps, res: number) => void): Body {
  const f = new Body(new Array<ValType>(nInputs + 2).fill(I));
  const ptrs = Array.from({ length: nInputs }, (_, i) => i);
  const out = nInputs;
  const n = nInputs + 1;
  const count = f.local(I);
  const tail = f.local(I);
  const xs = ptrs.map(() => f.local(V));
  const res = f.local(V);
  const t = temps(f);
  f.get(n).i32Const(2).i32ShrU().set(count);
  f.get(n).i32Const(3).i32And().set(tail);
  countdown(f, count, () => {
    ptrs.forEach((p, i) => f.get(p).v128Load().set(xs[i]!));
    math(f, xs, t, res);
    f.get(out).get(res).v128Store();
    for (const p of [...ptrs, out]) addTo(f, p, 16);
  });
  f.get(tail).if(() => {
    ptrs.forEach((p, i) => loadPartial(f, p, tail, xs[i]!));
    math(f, xs, t, res);
    storePartial(f, out, tail, res);
  });
  return f;
}

/**
 * res = gelu(x) = x*cdf(x), lane by lane, of v128 local x (uses the temps): the one sequence of
 * operations every GELU forward runs, here and in the GEMM's epilogue (./gemm.ts), so that
 * both give the same bits.
 */
export function geluOf(f: Body, x: number, t: Temps, res: number): void {
  cdfOf(f, x, t);
  f.get(x).get(t.cdf).f32x4Mul().set(res);
}

/**
 * res = gelu'(x) = cdf + x*pdf of v128 local x, after cdfOf or geluOf (which leave cdf(x) in
 * t.cdf): the factor geluGrad multiplies dy by, so the GEMM's GELU epilogue and geluGrad share it.
 */
export function geluSlopeOf(f: Body, x: number, t: Temps, res: number): void {
  f.get(t.cdf).get(x);
  pdfOf(f, x, t);
  f.f32x4Mul().f32x4Add().set(res);
}

/** gelu(x, y, n): y = x*cdf(x). */
function geluBody(): Body {
  return elementwiseBody(1, (f, [x], t, res) => geluOf(f, x!, t, res));
}

/** geluGrad(dy, x, dx, n): dx = dy*(cdf + x*pdf). */
function geluGradBody(): Body {
  return elementwiseBody(2, (f, [dy, x], t, res) => {
    cdfOf(f, x!, t);
    geluSlopeOf(f, x!, t, res);
    f.get(dy!).get(res).f32x4Mul().set(res);
  });
}

/** erf(x, y, n): y = erf(x), the approximation above on its own, for its accuracy test. */
function erfBody(): Body {
  return elementwiseBody(1, (f, [x], t, res) => {
    f.get(x!);
    erfOf(f, t);
    f.set(res);
  });
}

const MODULE = assembleModule([
  { name: 'erf', body: erfBody() },
  { name: 'layerNorm', body: layerNormBody() },
  { name: 'layerNormGrad', body: layerNormGradBody() },
  { name: 'gelu', body: geluBody() },
  { name: 'geluGrad', body: geluGradBody() },
]);

/** Whether this engine can run the module (wasm SIMD). */
export const simdNormGeluSupported = wasmApi?.validate(MODULE) ?? false;

/** The kernels; every pointer is a byte offset into the memory they were made for. */
export interface SimdNormGelu {
  layerNorm(x: number, gamma: number, beta: number, y: number, mean: number, rstd: number, rows: number, cols: number, eps: number): void;
  layerNormGrad(
    dy: number,
    x: number,
    gamma: number,
    mean: number,
    rstd: number,
    dx: number,
    dgamma: number,
    dbeta: number,
    rows: number,
    cols: number,
  ): void;
  gelu(x: number, y: number, n: number): void;
  geluGrad(dy: number, x: number, dx: number, n: number): void;
  /** The erf approximation gelu uses, on its own. */
  erf(x: number, y: number, n: number): void;
}

/**
 * The kernels bound to `memory` (the tfjs wasm backend's heap), or null where they cannot run: no
 * wasm SIMD, or a memory this module cannot import (the threaded backend's shared memory).
 */
export function simdNormGelu(memory: unknown): SimdNormGelu | null {
  return instantiateWith(MODULE, memory) as unknown as SimdNormGelu | null;
}
