import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TorchZipFile } from '../../shared/interop/torch-zip.js';
import { openStateDict } from '../../shared/interop/state-dict.js';
import { UserError } from '../../shared/util/errors.js';
import { torchReference } from '../helpers/torch.js';

type Expect = Record<string, Record<string, { shape: number[]; values: number[] }>>;

test('torch-zip: state dicts saved by torch.save read back exactly (fp32/fp16/bf16/fp64, views, shared storage, training checkpoints)', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-tz-'));
  try {
    const ref = torchReference<Expect>('torch_zip_cases.py', [dir]);
    if ('skip' in ref) return t.skip(ref.skip);
    for (const [file, tensors] of Object.entries(ref.value)) {
      const sd = await openStateDict(path.join(dir, `${file}.bin`));
      try {
        assert.deepEqual([...sd.tensors.keys()].sort(), Object.keys(tensors).sort(), file);
        for (const [name, want] of Object.entries(tensors)) {
          assert.deepEqual(sd.tensors.get(name)!.shape, want.shape, `${file} ${name}`);
          assert.deepEqual(Array.from(await sd.readF32(name)), want.values, `${file} ${name}`);
        }
      } finally {
        await sd.close();
      }
    }
    const typed = await TorchZipFile.open(path.join(dir, 'dtypes.bin'));
    assert.equal(typed.tensors.get('half')!.dtype, 'F16');
    await typed.close();

    // A pickle that would call os.system is refused at the global, before anything runs.
    const evil = path.join(dir, 'evil.bin');
    await assert.rejects(
      openStateDict(evil),
      (e: Error) => e instanceof UserError && e.message.includes(evil) && /'(posix|os|nt)\.system'/.test(e.message),
    );
    assert.equal(existsSync(path.join(dir, 'PWNED')), false);
    await assert.rejects(openStateDict(path.join(dir, 'notdict.bin')), /notdict\.bin: the pickle holds a list or tuple, not a state dict/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('torch-zip: files that are not zip checkpoints get one clear error naming the file', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-tz-'));
  try {
    const legacy = path.join(dir, 'legacy.bin');
    writeFileSync(legacy, Buffer.from([0x80, 0x02, 0x8a, 0x0a]));
    await assert.rejects(
      openStateDict(legacy),
      (e: Error) => e instanceof UserError && /legacy.bin: a legacy \(pre-1.6\) PyTorch file/.test(e.message),
    );
    const junk = path.join(dir, 'junk.pt');
    writeFileSync(junk, Buffer.from('PK\x03\x04 not really a zip'));
    await assert.rejects(openStateDict(junk), /junk.pt: not a PyTorch zip checkpoint/);
    await assert.rejects(openStateDict(path.join(dir, 'absent.bin')), /absent.bin: cannot open \(ENOENT\)/);
    // A safetensors header of 128 bytes starts the file with 0x80, pickle's PROTO opcode: still safetensors.
    const json = Buffer.from(JSON.stringify({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }).padEnd(128, ' '));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const st = path.join(dir, 'header-128.safetensors');
    writeFileSync(st, Buffer.concat([len, json, Buffer.from(new Float32Array([2.5]).buffer)]));
    const sd = await openStateDict(st);
    try {
      assert.deepEqual([...(await sd.readF32('a'))], [2.5]);
    } finally {
      await sd.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
