/**
 * A tiny WebAssembly assembler for the project's hand-written SIMD kernels: the build has no wasm
 * toolchain, and a kernel of more than a few dozen instructions written as raw bytes cannot be
 * reviewed. Each method emits one instruction and is named after it in the text format
 * (`local.get` -> get, `f32x4.add` -> f32x4Add), so a body reads as the WAT it stands for. Only
 * what the kernels use is here: i32, f32 and v128 values, one imported memory, functions without
 * results, structured control with named labels.
 */

/** The part of the WebAssembly API the kernels use (the project's lib settings carry no WebAssembly types). */
export interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Memory: new (d: { initial: number; maximum?: number; shared?: boolean }) => { buffer: ArrayBuffer };
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}

/** This engine's WebAssembly, or undefined where it has none. */
export const wasmApi: WasmApi | undefined = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;

/**
 * The exports of `bytes` instantiated with `memory` as its import `e.m`, or null where this engine
 * cannot run the module (no WebAssembly, or a feature it lacks: SIMD, relaxed SIMD) or the module
 * cannot import that memory (the threaded tfjs backend's shared memory).
 */
export function instantiateWith(bytes: Uint8Array, memory: unknown): Record<string, unknown> | null {
  if (!wasmApi?.validate(bytes)) return null;
  try {
    return new wasmApi.Instance(new wasmApi.Module(bytes), { e: { m: memory } }).exports;
  } catch {
    return null;
  }
}

/**
 * `bytes` instantiated with a memory of its own of `memoryBytes` (a multiple of 64 KiB), for
 * kernels that work on pieces copied in from JavaScript arrays; null where instantiateWith is.
 */
export function instantiateOwnMemory(
  bytes: Uint8Array,
  memoryBytes: number,
): { exports: Record<string, unknown>; buffer: ArrayBuffer } | null {
  if (!wasmApi) return null;
  const memory = new wasmApi.Memory({ initial: memoryBytes / 65536 }) as { buffer: ArrayBuffer };
  const exports = instantiateWith(bytes, memory);
  return exports && { exports, buffer: memory.buffer };
}

export type ValType = 'i32' | 'f32' | 'f64' | 'v128';
const VALTYPE: Record<ValType, number> = { i32: 0x7f, f32: 0x7d, f64: 0x7c, v128: 0x7b };

/** Unsigned LEB128. */
export function uleb(n: number): number[] {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`uleb: ${n} is not a u32`);
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (i32 constants). */
export function sleb(n: number): number[] {
  if (!Number.isInteger(n) || n < -0x80000000 || n > 0x7fffffff) throw new RangeError(`sleb: ${n} is not an i32`);
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

/** A branch target: the block or loop it was made for (`br` to a loop repeats it). */
export interface Label {
  readonly id: number;
}

/** The four little-endian bytes of `value` rounded to f32. */
function f32Bytes(value: number): number[] {
  return [...new Uint8Array(Float32Array.of(value).buffer)];
}

/** The body of one function: its locals and instructions. Parameters are locals 0..n-1. */
export class Body {
  readonly code: number[] = [];
  private readonly localTypes: ValType[] = [];
  private readonly open: Label[] = [];
  private nextLabel = 0;

  constructor(readonly params: readonly ValType[]) {}

  /** Declare a local; returns its index. */
  local(type: ValType): number {
    this.localTypes.push(type);
    return this.params.length + this.localTypes.length - 1;
  }

  private emit(...bytes: number[]): this {
    for (const b of bytes) this.code.push(b);
    return this;
  }

  private simd(op: number, ...imm: number[]): this {
    return this.emit(0xfd, ...uleb(op), ...imm);
  }

  /** memarg: log2 alignment hint, then the constant offset added to the address. */
  private memarg(align: number, offset: number): number[] {
    return [...uleb(align), ...uleb(offset)];
  }

  private structured(opcode: number, inner: (label: Label) => void): this {
    const label: Label = { id: this.nextLabel++ };
    this.emit(opcode, 0x40); // blocktype: no values
    this.open.push(label);
    inner(label);
    this.open.pop();
    return this.emit(0x0b);
  }

  private depth(label: Label): number {
    const i = this.open.lastIndexOf(label);
    if (i < 0) throw new Error('wasm-asm: branch to a label that is not open here');
    return this.open.length - 1 - i;
  }

  block(inner: (label: Label) => void): this {
    return this.structured(0x02, inner);
  }
  loop(inner: (label: Label) => void): this {
    return this.structured(0x03, inner);
  }
  /** if (pops an i32) without else. */
  if(inner: (label: Label) => void): this {
    return this.structured(0x04, inner);
  }
  br(label: Label): this {
    return this.emit(0x0c, ...uleb(this.depth(label)));
  }
  brIf(label: Label): this {
    return this.emit(0x0d, ...uleb(this.depth(label)));
  }

  get(i: number): this {
    return this.emit(0x20, ...uleb(i));
  }
  set(i: number): this {
    return this.emit(0x21, ...uleb(i));
  }
  tee(i: number): this {
    return this.emit(0x22, ...uleb(i));
  }

  i32Const(n: number): this {
    return this.emit(0x41, ...sleb(n));
  }
  i32Add(): this {
    return this.emit(0x6a);
  }
  i32Sub(): this {
    return this.emit(0x6b);
  }
  i32Mul(): this {
    return this.emit(0x6c);
  }
  i32DivU(): this {
    return this.emit(0x6e);
  }
  i32Shl(): this {
    return this.emit(0x74);
  }
  i32Eqz(): this {
    return this.emit(0x45);
  }
  i32Eq(): this {
    return this.emit(0x46);
  }
  i32Ne(): this {
    return this.emit(0x47);
  }
  i32LtU(): this {
    return this.emit(0x49);
  }
  i32GtU(): this {
    return this.emit(0x4b);
  }
  i32GeU(): this {
    return this.emit(0x4f);
  }
  i32ShrU(): this {
    return this.emit(0x76);
  }
  i32And(): this {
    return this.emit(0x71);
  }
  /** select: pops a, b, cond; pushes cond ? a : b. */
  select(): this {
    return this.emit(0x1b);
  }

  f32Load(offset = 0): this {
    return this.emit(0x2a, ...this.memarg(2, offset));
  }
  f32Store(offset = 0): this {
    return this.emit(0x38, ...this.memarg(2, offset));
  }
  /** Copies of 8 bytes go through an i64 on the stack (no i64 locals). */
  i64Load(offset = 0): this {
    return this.emit(0x29, ...this.memarg(3, offset));
  }
  i64Store(offset = 0): this {
    return this.emit(0x37, ...this.memarg(3, offset));
  }
  f32Const0(): this {
    return this.emit(0x43, 0, 0, 0, 0);
  }

  /** f32.const: the value rounded to f32. */
  f32Const(value: number): this {
    return this.emit(0x43, ...f32Bytes(value));
  }
  f32Add(): this {
    return this.emit(0x92);
  }
  f32Sub(): this {
    return this.emit(0x93);
  }
  f32Mul(): this {
    return this.emit(0x94);
  }
  f32Div(): this {
    return this.emit(0x95);
  }
  f32Sqrt(): this {
    return this.emit(0x91);
  }
  /** f32.convert_i32_u */
  f32ConvertI32U(): this {
    return this.emit(0xb3);
  }

  v128Load(offset = 0): this {
    return this.simd(0x00, ...this.memarg(4, offset));
  }
  /** Loads one f32 and puts it in all four lanes. */
  v128Load32Splat(offset = 0): this {
    return this.simd(0x09, ...this.memarg(2, offset));
  }
  v128Store(offset = 0): this {
    return this.simd(0x0b, ...this.memarg(4, offset));
  }
  /** Loads one f32 into lane 0 and zeros the rest (v128.load32_zero). */
  v128Load32Zero(offset = 0): this {
    return this.simd(0x5c, ...this.memarg(2, offset));
  }
  /** Loads two f32 into lanes 0-1 and zeros the rest (v128.load64_zero). */
  v128Load64Zero(offset = 0): this {
    return this.simd(0x5d, ...this.memarg(3, offset));
  }
  /** Pops an address and a vector; pushes the vector with lane `lane` (of 32 bits) loaded (v128.load32_lane). */
  v128Load32Lane(lane: number, offset = 0): this {
    return this.simd(0x56, ...this.memarg(2, offset), lane);
  }
  /** Pops an address and a vector; stores its 32-bit lane `lane` (v128.store32_lane). */
  v128Store32Lane(lane: number, offset = 0): this {
    return this.simd(0x5a, ...this.memarg(2, offset), lane);
  }
  /** Pops an address and a vector; stores its 64-bit lane `lane` (v128.store64_lane). */
  v128Store64Lane(lane: number, offset = 0): this {
    return this.simd(0x5b, ...this.memarg(3, offset), lane);
  }
  /**
   * i8x16.shuffle spelled in f32 lanes: pops a, b; pushes the vector whose lane i is lane
   * lanes[i] of a:b (0-3 from a, 4-7 from b).
   */
  f32x4Shuffle(lanes: readonly [number, number, number, number]): this {
    if (lanes.some((l) => !Number.isInteger(l) || l < 0 || l > 7)) throw new RangeError(`f32x4Shuffle: lanes ${lanes} are not all in 0..7`);
    return this.simd(0x0d, ...lanes.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3]));
  }
  v128Zero(): this {
    return this.simd(0x0c, ...new Array<number>(16).fill(0));
  }
  /** v128.const with the same f32 in all four lanes. */
  f32x4Const(value: number): this {
    const b = f32Bytes(value);
    return this.simd(0x0c, ...b, ...b, ...b, ...b);
  }
  /** Pops an f32, pushes it in all four lanes. */
  f32x4Splat(): this {
    return this.simd(0x13);
  }
  f32x4ExtractLane(lane: number): this {
    return this.simd(0x1f, lane);
  }
  /** Pops a vector and an f32; pushes the vector with that lane replaced. */
  f32x4ReplaceLane(lane: number): this {
    return this.simd(0x20, lane);
  }
  f32x4Add(): this {
    return this.simd(0xe4);
  }
  f32x4Sub(): this {
    return this.simd(0xe5);
  }
  f32x4Mul(): this {
    return this.simd(0xe6);
  }
  /**
   * f32x4.relaxed_madd (relaxed SIMD): pops a, b, c; pushes a*b + c, rounded once where the CPU
   * has FMA and as mul then add where it does not (fixed per machine, so still the same bits
   * every run there). Modules using it validate only on engines with relaxed SIMD.
   */
  f32x4RelaxedMadd(): this {
    return this.simd(0x105);
  }
  f32x4Div(): this {
    return this.simd(0xe7);
  }
  /** IEEE min/max (NaN in either operand gives NaN). */
  f32x4Min(): this {
    return this.simd(0xe8);
  }
  f32x4Max(): this {
    return this.simd(0xe9);
  }
  /**
   * Pseudo-min/max: pops a, b; pmin pushes b < a ? b : a, pmax a < b ? b : a (one minps/maxps on
   * x64, where min/max take ~7 instructions for IEEE NaN and signed-zero rules). With a constant
   * bound as b, the same as min/max except for a pair of zeros: a NaN a is returned as is.
   */
  f32x4Pmin(): this {
    return this.simd(0xea);
  }
  f32x4Pmax(): this {
    return this.simd(0xeb);
  }
  /** f64x2.splat: pops an f64. */
  f64x2Splat(): this {
    return this.simd(0x14);
  }
  f64x2Add(): this {
    return this.simd(0xf0);
  }
  f64x2Sub(): this {
    return this.simd(0xf1);
  }
  f64x2Mul(): this {
    return this.simd(0xf2);
  }
  f64x2Div(): this {
    return this.simd(0xf3);
  }
  f64x2Sqrt(): this {
    return this.simd(0xef);
  }
  /** The two low f32 lanes widened to f64 (exact). */
  f64x2PromoteLowF32x4(): this {
    return this.simd(0x5f);
  }
  /** The two f64 lanes rounded to f32 (to nearest, ties to even) in the low lanes, zeros above. */
  f32x4DemoteF64x2Zero(): this {
    return this.simd(0x5e);
  }
  /** Round to nearest, ties to even. */
  f32x4Nearest(): this {
    return this.simd(0x6a);
  }
  /** i32x4.trunc_sat_f32x4_s */
  i32x4TruncSatF32x4S(): this {
    return this.simd(0xf8);
  }
  i32x4Add(): this {
    return this.simd(0xae);
  }
  /** Pops a vector and an i32 shift count. */
  i32x4Shl(): this {
    return this.simd(0xab);
  }
  /** v128.const with the same i32 in all four lanes. */
  i32x4Const(value: number): this {
    const b = [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
    return this.simd(0x0c, ...b, ...b, ...b, ...b);
  }

  /** The function's code-section entry: size, locals, instructions, end. */
  encode(): Uint8Array {
    if (this.open.length) throw new Error('wasm-asm: a block is still open');
    const head = [...uleb(this.localTypes.length), ...this.localTypes.flatMap((t) => [1, VALTYPE[t]])];
    return concatBytes([uleb(head.length + this.code.length + 1), head, this.code, [0x0b]]);
  }
}

/** Counted loop: runs `inner` `count` times (count is a local, counted down to 0; 0 runs none). */
export function countdown(f: Body, count: number, inner: () => void): void {
  f.block((out) => {
    f.get(count).i32Eqz().brIf(out);
    f.loop((again) => {
      inner();
      f.get(count).i32Const(1).i32Sub().tee(count).brIf(again);
    });
  });
}

/** While loop: `cond` pushes an i32; the loop ends when it is 0. */
export function whileLoop(f: Body, cond: () => void, inner: (exit: Label) => void): void {
  f.block((exit) => {
    f.loop((again) => {
      cond();
      f.i32Eqz().brIf(exit);
      inner(exit);
      f.br(again);
    });
  });
}

/** local += constant or local */
export function addTo(f: Body, local: number, amount: number | { local: number }): void {
  f.get(local);
  if (typeof amount === 'number') f.i32Const(amount);
  else f.get(amount.local);
  f.i32Add().set(local);
}

export interface FuncDef {
  /** Exported under this name. */
  name: string;
  body: Body;
}

/** The parts one after another, in one array (no spread: a module's code is hundreds of KiB). */
function concatBytes(parts: readonly ArrayLike<number>[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function section(id: number, parts: readonly ArrayLike<number>[]): Uint8Array {
  const content = concatBytes(parts);
  return concatBytes([[id], uleb(content.length), content]);
}

function name(s: string): number[] {
  const bytes = [...new TextEncoder().encode(s)];
  return [...uleb(bytes.length), ...bytes];
}

/**
 * A module that imports one memory as `e.m` (at least one page, any maximum) and exports the
 * given functions, which take their parameters and return nothing.
 */
export function assembleModule(funcs: readonly FuncDef[]): Uint8Array {
  const types = funcs.flatMap((f) => [0x60, ...uleb(f.body.params.length), ...f.body.params.map((t) => VALTYPE[t]), 0]);
  return concatBytes([
    [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    section(1, [uleb(funcs.length), types]),
    section(2, [[1, ...name('e'), ...name('m'), 0x02, 0x00, 1]]),
    section(3, [uleb(funcs.length), funcs.flatMap((_, i) => uleb(i))]),
    section(7, [uleb(funcs.length), funcs.flatMap((f, i) => [...name(f.name), 0x00, ...uleb(i)])]),
    section(10, [uleb(funcs.length), ...funcs.map((f) => f.body.encode())]),
  ]);
}
