/**
 * Every seeded generator of the project, each a pure function of its seed across machines, Node
 * versions, backends and ranks (Math.random is none of these). Their bits are part of the
 * project's results: parameter initialisation and label smoothing (mulberry32, normalSource,
 * keyedUniform) make N ranks equal 1 rank; the sampler's order (Xoshiro128) is what a resumed run
 * reproduces; the data tools' draws (Prng) make datasets and splits reproducible.
 */

/** mulberry32: parameter initialisation (with normalSource). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal draws by Box-Muller from a uniform source. */
export function normalSource(uniform: () => number): () => number {
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    let u = 0;
    while (u <= 1e-12) u = uniform();
    const v = uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
}

/** A 32-bit hash of integers (murmur3 finaliser chain), for keyed draws that depend on no order. */
export function hashInts(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    let k = Math.imul(x | 0, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A uniform number in [0, 1) determined by its key alone. */
export function keyedUniform(...key: number[]): number {
  return hashInts(...key) / 4294967296;
}

/** splitmix32 (a 32-bit variant of Steele et al.'s SplitMix): turns (seed, epoch) into well-mixed state words. */
export function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * xoshiro128** (Blackman & Vigna), 32-bit arithmetic, seeded by running splitmix32 over
 * (seed, stream); `next()` returns a uint32, `below()` bounded integers by Lemire's multiply-shift
 * with rejection. The training sampler's epoch permutations.
 */
export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream = 0) {
    const st = { s: (seed ^ Math.imul(stream + 1, 0x632be5ab)) | 0 };
    // Mix the seed through a few rounds first so that seeds 0, 1, 2... do not start correlated.
    for (let i = 0; i < 4; i++) splitmix32(st);
    this.a = splitmix32(st);
    this.b = splitmix32(st);
    this.c = splitmix32(st);
    this.d = splitmix32(st);
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }

  next(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** Uniform integer in [0, bound), bound <= 2^32, unbiased (Lemire 2019). */
  below(bound: number): number {
    if (bound <= 1) return 0;
    for (;;) {
      const x = this.next();
      // The 64-bit product x * bound, computed in 16-bit halves of x so every partial stays
      // below 2^53 and exact in a double: hi = product >>> 32, lo = product mod 2^32.
      const p1 = (x >>> 16) * bound;
      const p0 = (x & 0xffff) * bound;
      const mid = (p1 % 0x10000) * 0x10000 + p0;
      const lo = mid % 0x1_0000_0000;
      const hi = Math.floor(p1 / 0x10000) + Math.floor(mid / 0x1_0000_0000);
      if (lo >= (0x1_0000_0000 - bound) % bound) return hi;
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * sfc32, seeded through splitmix32: what the data tools draw (synthetic data, splits), a pure
 * function of `--seed`.
 */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    const st = { s: seed >>> 0 };
    this.a = splitmix32(st);
    this.b = splitmix32(st);
    this.c = splitmix32(st);
    this.d = splitmix32(st);
    for (let i = 0; i < 12; i++) this.u32();
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.u32() / 4294967296;
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** Fisher-Yates shuffle in place. */
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = xs[i]!;
      xs[i] = xs[j]!;
      xs[j] = t;
    }
    return xs;
  }
}

/** A seed derived from a base seed and a stream name, so independent draws do not share state. */
export function deriveSeed(seed: number, stream: string): number {
  let h = (seed >>> 0) ^ 0x811c9dc5;
  for (let i = 0; i < stream.length; i++) h = Math.imul(h ^ stream.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
