import { wasmApi } from '../../kernels/wasm-asm.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '../../kernels/backend.js';
import { DEFAULT_BLOCKING, gemmAMode, gemmVariants, simdGemm, type GemmBlocking, type GemmVariant } from '../../kernels/simd/gemm.js';
import { simdNormGelu } from '../../kernels/simd/norm-gelu.js';
import { mulberry32, normalSource } from '../../shared/random/generators.js';

// The backend sets V8's relaxed-SIMD flag (Node 20), which the FMA build needs to validate.
await initBackend('wasm');

const { Memory } = wasmApi!;

const randArray = (n: number, seed: number) => {
  const r = normalSource(mulberry32(seed));
  return Float32Array.from({ length: n }, () => r());
};

interface Case {
  m: number;
  n: number;
  k: number;
  ta: boolean;
  tb: boolean;
  /** The stored A and B matrices, and which pair each output multiplies. */
  a: Float32Array[];
  b: Float32Array[];
  aIndex: number[];
  bIndex: number[];
}

const GUARD = 12345.5; // exact in f32

/** A build bound to its memory: reused across many small cases, what an earlier one left in the scratch stays there. */
interface Bound {
  mem: { buffer: ArrayBuffer };
  g: NonNullable<ReturnType<typeof simdGemm>>;
}

/**
 * Run one build on its own memory: A, B, C and the scratch laid out back to back, C and the
 * scratch filled with NaN (an element left unwritten, or padding read into a result, shows) and a
 * guard after C and after the scratch (a write past either shows).
 */
function runGemm(
  variant: GemmVariant,
  c: Case,
  blocking: GemmBlocking = DEFAULT_BLOCKING,
  reuse?: Map<GemmVariant, Bound>,
  epi?: Epi,
): Float32Array[] {
  const { m, n, k } = c;
  let bound = reuse?.get(variant);
  if (!bound) {
    const mem = new Memory({ initial: 256 });
    const g = simdGemm(mem, variant);
    assert.ok(g, `the ${variant} build binds`);
    bound = { mem, g };
    reuse?.set(variant, bound);
  }
  const { mem, g } = bound;
  const f = new Float32Array(mem.buffer);
  let at = 16; // floats; a non-zero start, so a stray write to address 0 is not hidden
  const put = (x: Float32Array) => {
    f.set(x, at);
    at += x.length;
    return (at - x.length) * 4;
  };
  const aOff = put(Float32Array.from(c.a.flatMap((x) => [...x])));
  const bOff = put(Float32Array.from(c.b.flatMap((x) => [...x])));
  const cLen = c.aIndex.length * m * n;
  // The epilogue's operands before C, each followed by a guard (the bias: a read past it would
  // add the guard in; z: a write past it shows).
  const guarded = (x: Float32Array) => {
    const off = put(x);
    f[at++] = GUARD;
    return off;
  };
  const biasOff = epi?.bias ? guarded(epi.bias) : 0;
  const resOff = epi?.residual ? guarded(epi.residual) : 0;
  const mulOff = epi?.multiply ? guarded(epi.multiply) : 0;
  const slopeOff = epi?.gelu ? guarded(new Float32Array(cLen).fill(NaN)) : 0;
  const cOff = at * 4;
  f.fill(NaN, at, at + cLen);
  at += cLen;
  f[at++] = GUARD;
  const scratch = at * 4;
  at += Math.ceil(g.scratchBytes(m, n, k, blocking) / 4);
  // NaN in the scratch: a packed panel's unwritten padding lanes may be anything, and must not reach C.
  f.fill(NaN, scratch / 4, at);
  f[at] = GUARD;
  const epilogue = !epi
    ? undefined
    : epi.multiply
      ? { multiply: mulOff }
      : { bias: biasOff, ...(epi.residual ? { residual: resOff } : {}), ...(epi.gelu ? { slope: slopeOff } : {}) };
  g.run(
    { m, n, k, transposeA: c.ta, transposeB: c.tb, a: aOff, b: bOff, aIndex: c.aIndex, bIndex: c.bIndex, c: cOff, scratch, epilogue },
    blocking,
  );
  assert.equal(f[cOff / 4 + cLen], GUARD, 'nothing written past C');
  assert.equal(f[at], GUARD, 'nothing written past the scratch');
  if (epi?.gelu) {
    assert.equal(f[slopeOff / 4 + cLen], GUARD, 'nothing written past the slope');
    epi.slope = f.slice(slopeOff / 4, slopeOff / 4 + cLen);
  }
  return c.aIndex.map((_, t) => f.slice(cOff / 4 + t * m * n, cOff / 4 + (t + 1) * m * n));
}

/** An epilogue's operands; runGemm puts gelu' of the pre-activation here for 'gelu'. */
interface Epi {
  bias?: Float32Array;
  multiply?: Float32Array;
  residual?: Float32Array;
  gelu?: boolean;
  slope?: Float32Array;
}

/**
 * The documented order in scalar f32: per element one accumulator from 0, k ascending; fused
 * (fl(a*b + acc)) or not (fl(acc + fl(a*b))). a*b of two f32 is exact in a double.
 */
function reference(c: Case, t: number, fused: boolean): Float32Array {
  const { m, n, k } = c;
  const A = c.a[c.aIndex[t]!]!;
  const B = c.b[c.bIndex[t]!]!;
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let q = 0; q < k; q++) {
        const p = A[c.ta ? q * m + i : i * k + q]! * B[c.tb ? j * k + q : q * n + j]!;
        acc = fused ? Math.fround(p + acc) : Math.fround(acc + Math.fround(p));
      }
      out[i * n + j] = acc;
    }
  }
  return out;
}

/** Whether the build's multiply-add rounds once: acc = -1, then + (1+2^-12)^2 = 1 + 2^-11 + 2^-24. */
function fuses(variant: GemmVariant): boolean {
  const e = 1 + 2 ** -12;
  const [r] = runGemm(variant, {
    m: 1,
    n: 1,
    k: 2,
    ta: false,
    tb: false,
    a: [Float32Array.of(-1, e)],
    b: [Float32Array.of(1, e)],
    aIndex: [0],
    bIndex: [0],
  });
  const v = r![0]!;
  assert.ok(v === 2 ** -11 || v === 2 ** -11 + 2 ** -24, `${variant}: ${v} is neither the fused nor the unfused result`);
  return v !== 2 ** -11;
}

const cpuHasFma = (() => {
  try {
    return process.arch === 'x64' && /^flags\s*:.*\bfma\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
})();

test('Node 20 with the flag set by initBackend validates both builds, FMA first', () => {
  assert.deepEqual(gemmVariants(), ['fma', 'muladd']);
});

test('the FMA build rounds once per multiply-add on an x64 CPU with FMA3; the mul+add build twice', () => {
  assert.equal(fuses('muladd'), false);
  // relaxed_madd is mul+add on a CPU without FMA; where it has FMA3, V8 emits vfmadd.
  if (cpuHasFma) assert.equal(fuses('fma'), true);
});

test('each build gives exactly the documented summation order: odd shapes, all layouts, k and m across block boundaries, broadcast operands', () => {
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [3, 12, 5], // one FMA tile exactly
    [4, 8, 3], // one mul+add tile exactly
    [7, 13, 29],
    [37, 41, 300], // k past the default block of 256
    [65, 32, 65], // the attention products' shapes
    [2, 3, 0], // empty inner dimension: zeros
    [8, 96, 13], // the FMA build's wide tile (3x12) from here on
    [37, 130, 300], // wide, edge blocks on both sides, k past the default block
    [1030, 5, 3], // transposed, rows 4 KiB apart or more: A packed, not read in place
  ];
  const blockings: GemmBlocking[] = [DEFAULT_BLOCKING, { kc: 7, mc: 5 }, { kc: 1, mc: 1 }, { kc: 1e9, mc: 1e9 }];
  for (const variant of gemmVariants()) {
    const fused = fuses(variant);
    shapes.forEach(([m, n, k], s) => {
      for (const [ta, tb] of [
        [false, false],
        [true, false],
        [false, true],
        [true, true],
      ] as const) {
        // Three outputs from two A and two B matrices: repeated operands (packed once where the
        // whole matrix is one block) as broadcasting gives them.
        const c: Case = {
          m,
          n,
          k,
          ta,
          tb,
          a: [randArray(m * k, 10 * s + 1), randArray(m * k, 10 * s + 2)],
          b: [randArray(k * n, 10 * s + 3), randArray(k * n, 10 * s + 4)],
          aIndex: [0, 0, 1],
          bIndex: [1, 0, 0],
        };
        const want = c.aIndex.map((_, t) => reference(c, t, fused));
        for (const blocking of blockings) {
          // k = 300 with a k block of 1 is 300 passes over C: the default and unblocked suffice.
          if (k > 100 && blocking.kc < 8) continue;
          const got = runGemm(variant, c, blocking);
          got.forEach((g, t) =>
            assert.deepEqual(g, want[t], `${variant} ${m}x${k}.${k}x${n} ${ta} ${tb} kc ${blocking.kc} mc ${blocking.mc}: output ${t}`),
          );
        }
      }
    });
  }
});

test('the GEMM build is chosen by feature detection and CXR_WASM_RELAXED_SIMD=0 keeps it on mul+add; the backend report says which', () => {
  const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'wasm-gemm-variant.js');
  const run = (env: NodeJS.ProcessEnv) => {
    const r = spawnSync(process.execPath, [fixture, '--run'], { encoding: 'utf8', env: { ...process.env, ...env } });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as {
      reason: string;
      variant: string | null;
      variants: string[];
      values: number[];
    };
  };
  const on = run({ CXR_WASM_RELAXED_SIMD: '' });
  assert.equal(on.variant, on.variants[0]);
  assert.equal(on.variant, 'fma'); // Node 20 with the flag, or an engine with relaxed SIMD standard
  assert.match(on.reason, /FMA build/);
  const off = run({ CXR_WASM_RELAXED_SIMD: '0' });
  assert.equal(off.variant, 'muladd');
  assert.match(off.reason, /mul\+add build; relaxed SIMD off by CXR_WASM_RELAXED_SIMD=0/);
  // Same product on both builds: equal to rounding.
  on.values.forEach((v, i) => assert.ok(Math.abs(v - off.values[i]!) < 1e-4, `element ${i}: ${v} vs ${off.values[i]}`));
});

test("every edge: 1..9 rows, 1..17 and 96..108 columns (each build's narrow and wide tile, partial panels of every width), k around the four-at-a-time packing, all layouts", () => {
  // The vector packing takes whole panels and four k at a time, the rest lane by lane; the blocks
  // at the right and bottom edges are partial. Every remainder of both tiles against the reference,
  // on one memory per build (so stale scratch from the previous case is there to be misread).
  const reuse = new Map<GemmVariant, Bound>();
  const widths = [...Array.from({ length: 17 }, (_, i) => i + 1), ...Array.from({ length: 13 }, (_, i) => i + 96)];
  for (const variant of gemmVariants()) {
    const fused = fuses(variant);
    let seed = 1000;
    for (const k of [1, 5, 8]) {
      for (let m = 1; m <= 9; m++) {
        for (const n of widths) {
          for (const [ta, tb] of [
            [false, false],
            [true, false],
            [false, true],
            [true, true],
          ] as const) {
            const c: Case = { m, n, k, ta, tb, a: [randArray(m * k, seed++)], b: [randArray(k * n, seed++)], aIndex: [0], bIndex: [0] };
            const [got] = runGemm(variant, c, DEFAULT_BLOCKING, reuse);
            assert.deepEqual(got, reference(c, 0, fused), `${variant} ${m}x${k}.${k}x${n} ${ta} ${tb}`);
          }
        }
      }
    }
  }
});

/**
 * kernels/simd/norm-gelu.ts's GELU kernels (what CxrGelu and CxrGeluGrad run) on their own memory:
 * the reference bits of gelu(x) and of geluGrad(dy = 1, x), the factor it multiplies dy by.
 */
const geluKernels = (() => {
  const mem = new Memory({ initial: 16 });
  const k = simdNormGelu(mem);
  assert.ok(k, 'the LayerNorm/GELU module binds');
  return (x: Float32Array) => {
    const f = new Float32Array(mem.buffer);
    const n = x.length;
    f.set(x, 4);
    f.fill(1, 4 + n, 4 + 2 * n);
    k.gelu(16, 16 + 8 * n, n);
    k.geluGrad(16 + 4 * n, 16, 16 + 12 * n, n);
    return { y: f.slice(4 + 2 * n, 4 + 3 * n), slope: f.slice(4 + 3 * n, 4 + 4 * n) };
  };
})();

test('A is read in place as stored, or transposed without an epilogue and rows under 4 KiB apart; packed otherwise', () => {
  assert.equal(gemmAMode({ m: 2080, transposeA: false }), 'rows');
  assert.equal(gemmAMode({ m: 2080, transposeA: false, epilogue: { bias: 0 } }), 'rows');
  assert.equal(gemmAMode({ m: 65, transposeA: true }), 'cols'); // p^T dctx
  assert.equal(gemmAMode({ m: 1023, transposeA: true }), 'cols');
  assert.equal(gemmAMode({ m: 1024, transposeA: true }), 'packed'); // 4 KiB per k: one L1 set
  assert.equal(gemmAMode({ m: 128, transposeA: true, epilogue: { multiply: 0 } }), 'packed');
});

test("the epilogues give the bits of the unfused ops: z = sum + bias; then + residual; or gelu(z) and gelu'(z) as the GELU kernels; or sum * s; every edge block, k blocks, both builds", () => {
  const reuse = new Map<GemmVariant, Bound>();
  const widths = [1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 16, 17, 96, 97, 98, 99, 100, 101, 103, 107, 108];
  for (const variant of gemmVariants()) {
    const fused = fuses(variant);
    let seed = 5000;
    for (const [k, blocking] of [
      [1, DEFAULT_BLOCKING],
      [8, DEFAULT_BLOCKING],
      [11, { kc: 4, mc: 5 }],
      [0, DEFAULT_BLOCKING],
    ] as const) {
      for (let m = 1; m <= 9; m++) {
        for (const n of widths) {
          const tb = (m + n) % 2 === 1; // both B layouts, alternating
          const ta = (m + 2 * n) % 3 === 0; // a transposed A with an epilogue is packed (gemmAMode)
          // Two outputs (batch 2) sharing B: the epilogue's residual/z offsets for output 1 too.
          const c: Case = {
            m,
            n,
            k,
            ta,
            tb,
            a: [randArray(m * k, seed++), randArray(m * k, seed++)],
            b: [randArray(k * n, seed++)],
            aIndex: [0, 1],
            bIndex: [0, 0],
          };
          // Large-ish values, so that GELU sees both tails and the bias add rounds.
          const bias = randArray(n, seed++).map((v) => 3 * v);
          const residual = randArray(2 * m * n, seed++);
          const sums = c.aIndex.map((_, t) => reference(c, t, fused));
          const plus = (x: Float32Array, y: Float32Array, at: number) => x.map((v, i) => Math.fround(v + y[(at + i) % y.length]!));
          const z = sums.map((s) => plus(s, bias, 0));
          const what = `${variant} ${m}x${k}.${k}x${n} ta ${ta} tb ${tb} kc ${blocking.kc}`;
          const biased = runGemm(variant, c, blocking, reuse, { bias });
          biased.forEach((g, t) => assert.deepEqual(g, z[t], `${what} bias: output ${t}`));
          const res = runGemm(variant, c, blocking, reuse, { bias, residual });
          res.forEach((g, t) => assert.deepEqual(g, plus(z[t]!, residual.subarray(t * m * n), 0), `${what} bias+residual: output ${t}`));
          const scaled = runGemm(variant, c, blocking, reuse, { multiply: residual });
          scaled.forEach((g, t) =>
            assert.deepEqual(
              g,
              sums[t]!.map((v, i) => Math.fround(v * residual[t * m * n + i]!)),
              `${what} multiply: output ${t}`,
            ),
          );
          const epi: Epi = { bias, gelu: true };
          const y = runGemm(variant, c, blocking, reuse, epi);
          y.forEach((g, t) => {
            const want = geluKernels(z[t]!);
            assert.deepEqual(g, want.y, `${what} gelu: output ${t}`);
            assert.deepEqual(epi.slope!.subarray(t * m * n, (t + 1) * m * n), want.slope, `${what} gelu: slope of output ${t}`);
          });
        }
      }
    }
  }
});
