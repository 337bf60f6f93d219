import { addTo, assembleModule, Body, countdown, instantiateOwnMemory } from '../wasm-asm.js';

/**
 * AdamW's per-element update (worker/steps/adamw.ts) as a WebAssembly SIMD kernel, two elements
 * per instruction in float64 (f64x2). The JavaScript loop runs the same float64 operations one
 * element at a time and spends most of its time there, not waiting for memory: the divide and
 * square root units take two lanes at once here. Every operation is the loop's, in its order,
 * IEEE float64 rounded to nearest (f64x2.mul/add/sub/div/sqrt), with the same conversions
 * (f32 -> f64 exact, f64 -> f32 to nearest, ties to even, as a Float32Array store), so the results
 * are bit-identical to it (a NaN stays a NaN; its payload may differ).
 *
 * The vectors are JavaScript Float32Arrays, so they go through the module's own memory in pieces
 * that stay in L2 (copied in, updated, copied back): the traffic to memory is the loop's, the
 * copies are cheap, as in ./add.ts.
 *
 * adamw(p, g, m, v, n, f, scale, beta1, a1, beta2, a2, stepSize, sqrtBc2, eps): for the n floats
 * at each of the four byte offsets, with gs = f32(g * scale) (the clipping's scale, which the loop
 * applies as a separate pass; 1 leaves g as it is):
 *   m' = beta1*m + a1*gs;  v' = beta2*v + (a2*gs)*gs;  p' = p*f - (stepSize*m') / (sqrt(v')/sqrtBc2 + eps)
 * and m, v, p get m', v', p' rounded to f32. The last odd element goes through the same lanes.
 */

const I = 'i32';
const F = 'f64';
const V = 'v128';

function adamwBody(): Body {
  const f = new Body([I, I, I, I, I, F, F, F, F, F, F, F, F, F]);
  const [p, g, m, v, n] = [0, 1, 2, 3, 4];
  const consts = [5, 6, 7, 8, 9, 10, 11, 12, 13]; // f, scale, beta1, a1, beta2, a2, stepSize, sqrtBc2, eps
  const [cF, cScale, cB1, cA1, cB2, cA2, cStep, cSq, cEps] = consts.map(() => f.local(V));
  const count = f.local(I);
  const [gs, mk, vk] = [f.local(V), f.local(V), f.local(V)];
  consts.forEach((c, i) => f.get(c).f64x2Splat().set([cF, cScale, cB1, cA1, cB2, cA2, cStep, cSq, cEps][i]!));

  /** One pair (or, with `one`, the low lane only) at the four pointers' current element. */
  const update = (one: boolean) => {
    const load = (at: number) => (one ? f.get(at).v128Load32Zero() : f.get(at).v128Load64Zero()).f64x2PromoteLowF32x4();
    const store = (at: number, x: number) => {
      f.get(at).get(x).f32x4DemoteF64x2Zero();
      if (one) f.v128Store32Lane(0);
      else f.v128Store64Lane(0);
    };
    // gs = f32(g * scale), back in f64
    load(g);
    f.get(cScale).f64x2Mul().f32x4DemoteF64x2Zero().f64x2PromoteLowF32x4().set(gs);
    // m' = beta1*m + a1*gs
    f.get(cB1);
    load(m);
    f.f64x2Mul().get(cA1).get(gs).f64x2Mul().f64x2Add().set(mk);
    // v' = beta2*v + (a2*gs)*gs
    f.get(cB2);
    load(v);
    f.f64x2Mul().get(cA2).get(gs).f64x2Mul().get(gs).f64x2Mul().f64x2Add().set(vk);
    store(m, mk);
    store(v, vk);
    // p' = p*f - (stepSize*m') / (sqrt(v')/sqrtBc2 + eps)
    f.get(p);
    load(p);
    f.get(cF).f64x2Mul();
    f.get(cStep).get(mk).f64x2Mul();
    f.get(vk).f64x2Sqrt().get(cSq).f64x2Div().get(cEps).f64x2Add();
    f.f64x2Div().f64x2Sub().f32x4DemoteF64x2Zero();
    if (one) f.v128Store32Lane(0);
    else f.v128Store64Lane(0);
  };

  f.get(n).i32Const(1).i32ShrU().set(count);
  countdown(f, count, () => {
    update(false);
    for (const ptr of [p, g, m, v]) addTo(f, ptr, 8);
  });
  f.get(n)
    .i32Const(1)
    .i32And()
    .if(() => update(true));
  return f;
}

const MODULE = assembleModule([{ name: 'adamw', body: adamwBody() }]);

/** Floats per piece: four pieces (p, g, m, v) of 16 KiB each stay in L1/L2 between copy and update. */
const PIECE = 4096;
const [P, G, M, VV] = [0, 1, 2, 3].map((i) => i * PIECE * 4);

type AdamwFn = (p: number, g: number, m: number, v: number, n: number, ...c: number[]) => void;

function instantiate(): { adamw: AdamwFn; floats: Float32Array } | null {
  const own = instantiateOwnMemory(MODULE, 4 * PIECE * 4); // the four pieces
  return own && { adamw: own.exports.adamw as AdamwFn, floats: new Float32Array(own.buffer) };
}

const kernel = instantiate();

/** Whether the SIMD kernel runs (false: the JavaScript loop, on engines without wasm SIMD). */
export const simdAdamwAvailable = kernel !== null;

/** The update's constants, as worker/steps/adamw.ts derives them for a step. */
export interface AdamwConstants {
  scale: number;
  beta1: number;
  a1: number;
  beta2: number;
  a2: number;
  stepSize: number;
  sqrtBc2: number;
  eps: number;
}

/**
 * The update above for elements [start, end) of params/grads (indexed over the whole vector) and
 * [start - mOffset, end - mOffset) of m/v, with decay factor `f` (one run of equal decay).
 * Returns false where the kernel cannot run (the caller then loops in JavaScript).
 */
export function adamwRun(
  params: Float32Array,
  grads: Float32Array,
  m: Float32Array,
  v: Float32Array,
  start: number,
  end: number,
  mOffset: number,
  f: number,
  c: AdamwConstants,
): boolean {
  if (!kernel) return false;
  const { adamw, floats } = kernel;
  for (let i = start; i < end; i += PIECE) {
    const len = Math.min(PIECE, end - i);
    const k = i - mOffset;
    floats.set(params.subarray(i, i + len), P >> 2);
    floats.set(grads.subarray(i, i + len), G >> 2);
    floats.set(m.subarray(k, k + len), M >> 2);
    floats.set(v.subarray(k, k + len), VV >> 2);
    adamw(P, G, M, VV, len, f, c.scale, c.beta1, c.a1, c.beta2, c.a2, c.stepSize, c.sqrtBc2, c.eps);
    params.set(floats.subarray(P >> 2, (P >> 2) + len), i);
    m.set(floats.subarray(M >> 2, (M >> 2) + len), k);
    v.set(floats.subarray(VV >> 2, (VV >> 2) + len), k);
  }
  return true;
}
