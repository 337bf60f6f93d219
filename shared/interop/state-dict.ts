import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { UserError } from '../util/errors.js';
import { type Dtype, SafetensorsFile } from './safetensors.js';
import { TorchZipFile } from './torch-zip.js';

/** One tensor of a weights file: its name, element type and shape (PyTorch layout). */
export interface StateDictTensor {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
}

/** A weights file read one tensor at a time, whatever its format. */
export interface StateDict {
  readonly path: string;
  readonly tensors: ReadonlyMap<string, StateDictTensor>;
  /** A floating-point tensor as contiguous float32 (row-major, PyTorch's layout). */
  readF32(name: string): Promise<Float32Array>;
  close(): Promise<void>;
}

/**
 * Opens a safetensors file or a PyTorch zip checkpoint (`.bin`, `.pt`, `.pth`), told apart by
 * their first bytes (a zip starts with 'PK', safetensors' JSON header at byte 8), not by the extension.
 */
export async function openStateDict(file: string): Promise<StateDict> {
  let head: Buffer;
  try {
    const fh = await fsp.open(file, 'r');
    head = Buffer.alloc(9);
    await fh.read(head, 0, 9, 0).finally(() => fh.close());
  } catch (e) {
    throw new UserError(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (head[0] === 0x50 && head[1] === 0x4b) return TorchZipFile.open(file);
  // safetensors: an 8-byte little-endian header length, then the JSON header. Its first byte may
  // be 0x80 too (a header of 128 + 256k bytes), so the '{' decides before the pickle opcode does.
  if (head[8] === 0x7b) return SafetensorsFile.open(file);
  // A legacy torch.save file: pickle's PROTO opcode and a protocol number; refused there with a reason.
  if (head[0] === 0x80 && head[1]! >= 2 && head[1]! <= 5) return TorchZipFile.open(file);
  return SafetensorsFile.open(file);
}

/** sha256 of a file, streamed (weights files are hundreds of MB). */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}
