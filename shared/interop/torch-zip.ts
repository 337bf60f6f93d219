import { promises as fsp } from 'node:fs';
import { UserError } from '../util/errors.js';
import { DTYPE_BYTES, type Dtype, f16ToF32 } from './safetensors.js';
import { ZipReader } from './zip.js';

/**
 * PyTorch's checkpoint format (torch.save since 1.6): a zip archive `<name>/data.pkl` (a pickle of
 * the saved object), `<name>/data/<key>` (each storage's raw bytes, little-endian) and
 * `<name>/byteorder`. Tensors appear in the pickle as `torch._utils._rebuild_tensor_v2(storage,
 * offset, size, stride, ...)` with the storage a persistent id `('storage', torch.FloatStorage,
 * key, location, numel)`.
 *
 * A pickle can run any Python callable it names, so this is a restricted unpickler: it executes
 * only the opcodes a state dict uses and only these globals (a state dict needs nothing else);
 * any other global is refused before anything is built, naming the file and the global.
 */
const STORAGES: Record<string, Dtype> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};
const CALLABLES = ['collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter'];
const ALLOWED = new Set([...CALLABLES, ...Object.keys(STORAGES).map((s) => `torch.${s}`)]);

interface Global {
  kind: 'global';
  name: string;
}
interface Storage {
  kind: 'storage';
  dtype: Dtype;
  key: string;
  numel: number;
}
interface TensorRef {
  kind: 'tensor';
  storage: Storage;
  offset: number;
  shape: number[];
  stride: number[];
}
type Value = null | boolean | number | bigint | string | Buffer | Value[] | Tuple | Map<Value, Value> | Global | Storage | TensorRef;
/** Tuples are frozen arrays tagged apart from lists only where it matters (persistent ids, call arguments). */
type Tuple = readonly Value[];

export interface TorchTensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  readonly stride: readonly number[];
  /** Element offset into the storage. */
  readonly offset: number;
  readonly storageKey: string;
}

export class TorchZipFile {
  private constructor(
    readonly path: string,
    private readonly zip: ZipReader,
    private readonly prefix: string,
    readonly tensors: ReadonlyMap<string, TorchTensorInfo>,
  ) {}

  static async open(file: string): Promise<TorchZipFile> {
    const zip = await ZipReader.open(file);
    if (!zip) {
      const head = Buffer.alloc(2);
      const fh = await fsp.open(file, 'r');
      await fh.read(head, 0, 2, 0).finally(() => fh.close());
      const legacy = head[0] === 0x80;
      throw new UserError(
        legacy
          ? `${file}: a legacy (pre-1.6) PyTorch file, not the zip format; re-save it with torch.save(torch.load(f), f) in a recent PyTorch`
          : `${file}: not a PyTorch zip checkpoint (no zip directory at its end)`,
      );
    }
    try {
      const pkl = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
      if (pkl.length !== 1)
        throw new UserError(`${file}: a zip archive but not a PyTorch checkpoint (expected one '<name>/data.pkl', found ${pkl.length})`);
      const prefix = pkl[0]!.slice(0, -'data.pkl'.length);
      const order = zip.entries.has(`${prefix}byteorder`) ? (await zip.read(`${prefix}byteorder`)).toString('utf8').trim() : 'little';
      if (order !== 'little') throw new UserError(`${file}: storages are ${order}-endian; only little-endian checkpoints are read`);
      const top = unpickle(await zip.read(pkl[0]!), file);
      const tensors = stateDictTensors(top, file);
      for (const t of tensors.values()) {
        const entry = zip.entries.get(`${prefix}data/${t.storageKey}`);
        if (!entry) throw new UserError(`${file}: tensor '${t.name}' refers to storage '${t.storageKey}', which the archive lacks`);
        const need = (t.offset + span(t)) * DTYPE_BYTES[t.dtype];
        if (t.shape.every((d) => d > 0) && need > entry.size)
          throw new UserError(`${file}: tensor '${t.name}' needs ${need} bytes of storage '${t.storageKey}', which has ${entry.size}`);
      }
      return new TorchZipFile(file, zip, prefix, tensors);
    } catch (e) {
      await zip.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.zip.close();
  }

  /** A floating-point tensor as a contiguous float32 array (F16, BF16 and F64 converted; strides and offset applied). */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.tensors.get(name);
    if (!t) throw new UserError(`${this.path}: no tensor named '${name}'`);
    const n = t.shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    if (n === 0) return out;
    const eb = DTYPE_BYTES[t.dtype];
    const raw = await this.zip.read(`${this.prefix}data/${t.storageKey}`, t.offset * eb, (span(t) + 1) * eb);
    if (t.dtype === 'F32' && contiguous(t)) {
      new Uint8Array(out.buffer).set(raw.subarray(0, n * 4));
      return out;
    }
    const get = element(raw, t.dtype, this.path, name);
    // Walk the index space in row-major order, following the strides (views of shared storage).
    const idx = new Array<number>(t.shape.length).fill(0);
    let src = 0;
    for (let i = 0; i < n; i++) {
      out[i] = get(src);
      for (let d = t.shape.length - 1; d >= 0; d--) {
        idx[d]!++;
        src += t.stride[d]!;
        if (idx[d]! < t.shape[d]!) break;
        src -= t.stride[d]! * t.shape[d]!;
        idx[d] = 0;
      }
    }
    return out;
  }
}

/** Whether the strides are row-major over the shape (the storage holds the tensor as it is). */
function contiguous(t: { shape: readonly number[]; stride: readonly number[] }): boolean {
  let want = 1;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    if (t.shape[d] !== 1 && t.stride[d] !== want) return false;
    want *= t.shape[d]!;
  }
  return true;
}

/** The largest element index a tensor reaches past its offset. */
function span(t: { shape: readonly number[]; stride: readonly number[] }): number {
  return t.shape.reduce((s, d, i) => s + (d - 1) * t.stride[i]!, 0);
}

function element(raw: Buffer, dtype: Dtype, file: string, name: string): (i: number) => number {
  switch (dtype) {
    case 'F32':
      return (i) => raw.readFloatLE(4 * i);
    case 'F64':
      return (i) => raw.readDoubleLE(8 * i);
    case 'F16':
      return (i) => f16ToF32(raw.readUInt16LE(2 * i));
    case 'BF16': {
      const v = new DataView(new ArrayBuffer(4));
      return (i) => {
        v.setUint32(0, raw.readUInt16LE(2 * i) << 16);
        return v.getFloat32(0);
      };
    }
    default:
      throw new UserError(`${file}: tensor '${name}' is ${dtype}, expected a floating-point tensor (float32, float16, bfloat16, float64)`);
  }
}

/**
 * The tensors of a state dict: the top-level (Ordered)dict, or its 'state_dict' entry (training
 * checkpoints), with a 'module.' prefix on every name (DistributedDataParallel) removed, as
 * open_clip's loader does. Entries that are not tensors are left out.
 */
function stateDictTensors(top: Value, file: string): Map<string, TorchTensorInfo> {
  let dict = top;
  if (dict instanceof Map && dict.get('state_dict') instanceof Map) dict = dict.get('state_dict')!;
  if (!(dict instanceof Map)) throw new UserError(`${file}: the pickle holds ${describe(top)}, not a state dict (a dict of tensors)`);
  const out = new Map<string, TorchTensorInfo>();
  for (const [k, v] of dict) {
    if (typeof k !== 'string' || !isTensor(v)) continue;
    out.set(k, { name: k, dtype: v.storage.dtype, shape: v.shape, stride: v.stride, offset: v.offset, storageKey: v.storage.key });
  }
  if (out.size === 0) throw new UserError(`${file}: the state dict holds no tensors`);
  const names = [...out.keys()];
  if (names.every((n) => n.startsWith('module.')))
    return new Map(names.map((n) => [n.slice('module.'.length), { ...out.get(n)!, name: n.slice('module.'.length) }]));
  return out;
}

function tagged<K extends (Global | Storage | TensorRef)['kind']>(
  v: Value | undefined,
  kind: K,
): Extract<Global | Storage | TensorRef, { kind: K }> | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Map || Buffer.isBuffer(v)) return null;
  const o = v as Global | Storage | TensorRef;
  return o.kind === kind ? (o as Extract<Global | Storage | TensorRef, { kind: K }>) : null;
}

function isTensor(v: Value | undefined): v is TensorRef {
  return tagged(v, 'tensor') !== null;
}

function describe(v: Value): string {
  if (v === null) return 'None';
  if (Array.isArray(v)) return 'a list or tuple';
  if (v instanceof Map) return 'a dict';
  if (Buffer.isBuffer(v)) return 'bytes';
  if (typeof v === 'object') return `a ${(v as Global | Storage | TensorRef).kind}`;
  return `a ${typeof v}`;
}

const MARK = Symbol('mark');

/** Runs the pickle in `data` with the restricted set of opcodes and globals above. */
export function unpickle(data: Buffer, file: string): Value {
  const where = `${file}: data.pkl`;
  const fail = (why: string) => new UserError(`${where}: ${why}`);
  const stack: (Value | typeof MARK)[] = [];
  const memo = new Map<number, Value>();
  let p = 0;
  const need = (n: number) => {
    if (p + n > data.length) throw fail(`truncated at byte ${p}`);
    const at = p;
    p += n;
    return at;
  };
  const pop = (): Value => {
    const v = stack.pop();
    if (v === undefined || v === MARK) throw fail(`stack underflow at byte ${p}`);
    return v;
  };
  const popMark = (): Value[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) throw fail(`no MARK before byte ${p}`);
    const items = stack.splice(i) as Value[];
    items.shift();
    return items;
  };
  const top = (): Value => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) throw fail(`empty stack at byte ${p}`);
    return v;
  };
  const readLine = () => {
    const end = data.indexOf(0x0a, p);
    if (end < 0) throw fail(`unterminated line at byte ${p}`);
    const s = data.toString('utf8', p, end);
    p = end + 1;
    return s;
  };
  const global = (module: string, name: string): Global => {
    const full = `${module}.${name}`;
    if (!ALLOWED.has(full))
      throw fail(
        `refers to the Python global '${full}', which a state dict of tensors never needs; refusing to load it ` +
          `(only ${[...ALLOWED].filter((g) => !g.endsWith('Storage')).join(', ')} and torch.*Storage are accepted)`,
      );
    return { kind: 'global', name: full };
  };
  const setItems = (dict: Value, items: Value[]) => {
    if (!(dict instanceof Map)) throw fail(`SETITEM(S) on ${describe(dict)}`);
    for (let i = 0; i + 1 < items.length; i += 2) dict.set(items[i]!, items[i + 1]!);
  };
  const int = (v: Value, what: string): number => {
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n)) throw fail(`${what} is ${describe(v)}, expected an integer`);
    return n;
  };
  const ints = (v: Value, what: string): number[] => {
    if (!Array.isArray(v)) throw fail(`${what} is ${describe(v)}, expected a tuple of integers`);
    return v.map((x) => int(x, what));
  };
  const call = (fn: Value, args: Value): Value => {
    const f = tagged(fn, 'global');
    if (!f) throw fail(`REDUCE calls ${describe(fn)}`);
    if (!Array.isArray(args)) throw fail(`REDUCE arguments are ${describe(args)}`);
    switch (f.name) {
      case 'collections.OrderedDict': {
        const m = new Map<Value, Value>();
        if (args.length > 0 && Array.isArray(args[0])) for (const kv of args[0] as Value[]) if (Array.isArray(kv)) m.set(kv[0]!, kv[1]!);
        return m;
      }
      case 'torch._utils._rebuild_tensor_v2': {
        const [s, offset, size, stride] = args;
        const storage = tagged(s, 'storage');
        if (!storage) throw fail('_rebuild_tensor_v2 without a storage');
        const shape = ints(size!, 'tensor size');
        const strides = ints(stride!, 'tensor stride');
        if (shape.length !== strides.length)
          throw fail(`tensor size ${JSON.stringify(shape)} and stride ${JSON.stringify(strides)} differ in rank`);
        return { kind: 'tensor', storage, offset: int(offset!, 'storage offset'), shape, stride: strides };
      }
      case 'torch._utils._rebuild_parameter':
        return args[0]!;
      default:
        throw fail(`'${f.name}' is not callable here`);
    }
  };

  for (;;) {
    const op = data[need(1)]!;
    switch (op) {
      case 0x80: // PROTO
        need(1);
        break;
      case 0x95: // FRAME
        need(8);
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(Object.freeze([]));
        break;
      case 0x74: // TUPLE
        stack.push(Object.freeze(popMark()));
        break;
      case 0x85: // TUPLE1
        stack.push(Object.freeze([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push(Object.freeze([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(Object.freeze([pop(), b, c]));
        break;
      }
      case 0x71: // BINPUT
        memo.set(data[need(1)]!, top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(data.readUInt32LE(need(4)), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const k = op === 0x68 ? data[need(1)]! : data.readUInt32LE(need(4));
        if (!memo.has(k)) throw fail(`memo ${k} read before it was written`);
        stack.push(memo.get(k)!);
        break;
      }
      case 0x58: // BINUNICODE
      case 0x8c: // SHORT_BINUNICODE
      case 0x8d: {
        // BINUNICODE8
        const n = op === 0x8c ? data[need(1)]! : op === 0x58 ? data.readUInt32LE(need(4)) : Number(data.readBigUInt64LE(need(8)));
        const at = need(n);
        stack.push(data.toString('utf8', at, at + n));
        break;
      }
      case 0x43: // SHORT_BINBYTES
      case 0x42: {
        // BINBYTES
        const n = op === 0x43 ? data[need(1)]! : data.readUInt32LE(need(4));
        const at = need(n);
        stack.push(Buffer.from(data.subarray(at, at + n)));
        break;
      }
      case 0x4a: // BININT
        stack.push(data.readInt32LE(need(4)));
        break;
      case 0x4b: // BININT1
        stack.push(data[need(1)]!);
        break;
      case 0x4d: // BININT2
        stack.push(data.readUInt16LE(need(2)));
        break;
      case 0x8a: {
        // LONG1: little-endian two's complement
        const n = data[need(1)]!;
        const at = need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[at + i]!);
        if (n > 0 && data[at + n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian double)
        stack.push(data.readDoubleBE(need(8)));
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x63: {
        // GLOBAL: module and name, one line each
        const module = readLine();
        stack.push(global(module, readLine()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw fail('STACK_GLOBAL without two strings');
        stack.push(global(module, name));
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        const list = top();
        if (!Array.isArray(list) || Object.isFrozen(list)) throw fail('APPEND to something that is not a list');
        (list as Value[]).push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        const list = top();
        if (!Array.isArray(list) || Object.isFrozen(list)) throw fail('APPENDS to something that is not a list');
        (list as Value[]).push(...items);
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        stack.push(call(pop(), args));
        break;
      }
      case 0x62: {
        // BUILD: only the OrderedDict of a state dict has state (its `_metadata`), which is not needed.
        pop();
        if (!(top() instanceof Map)) throw fail(`BUILD on ${describe(top())}`);
        break;
      }
      case 0x51: {
        // BINPERSID: ('storage', torch.XStorage, key, location, numel)
        const pid = pop();
        if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) throw fail('a persistent id that is not a storage');
        const type = tagged(pid[1], 'global');
        if (!type) throw fail('a storage without a storage type');
        const dtype = STORAGES[type.name.slice('torch.'.length)];
        if (!dtype || typeof pid[2] !== 'string') throw fail(`a storage of type '${type.name}'`);
        stack.push({ kind: 'storage', dtype, key: pid[2], numel: int(pid[4]!, 'storage size') });
        break;
      }
      default:
        throw fail(
          `pickle opcode 0x${op.toString(16).padStart(2, '0')} at byte ${p - 1} is not one a state dict of tensors uses; refusing to load it`,
        );
    }
  }
}
