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
 * their first bytes (a zip starts with 'PK'), not by the extension.
 */
export async function openStateDict(file: string): Promise<StateDict> {
  let head: Buffer;
  try {
    const fh = await fsp.open(file, 'r');
    head = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0).finally(() => fh.close());
  } catch (e) {
    throw new UserError(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (head[0] === 0x50 && head[1] === 0x4b) return TorchZipFile.open(file);
  if (head[0] === 0x80) return TorchZipFile.open(file); // legacy pickle: refused there with a reason
  return SafetensorsFile.open(file);
}

/** sha256 of a file, streamed (weights files are hundreds of MB). */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}
