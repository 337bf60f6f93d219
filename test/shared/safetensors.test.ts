import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SafetensorsFile, f16ToF32, writeSafetensors } from '../../shared/interop/safetensors.js';
import { UserError } from '../../shared/util/errors.js';

/** A safetensors file from a header object and raw data bytes, exactly as given (for malformed cases). */
function rawFile(header: unknown, data: Buffer, headerLenOverride?: bigint): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

test('safetensors: write then read float32 tensors and metadata; layout matches the spec byte for byte', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-st-'));
  try {
    const file = path.join(dir, 'a.safetensors');
    const a = Float32Array.from([1, -2.5, 3e-8, NaN, -0, Infinity]);
    let produced = 0;
    await writeSafetensors(
      file,
      [
        { name: 'a', shape: [2, 3], data: a },
        {
          name: 'scalar',
          shape: [],
          data: () => {
            produced++;
            return Float32Array.of(7);
          },
        },
        { name: 'empty', shape: [0, 4], data: new Float32Array(0) },
      ],
      { format: 'pt' },
    );
    assert.equal(produced, 1);
    const raw = readFileSync(file);
    const n = Number(raw.readBigUInt64LE(0));
    assert.equal((8 + n) % 8, 0, 'data starts 8-byte aligned');
    const header = JSON.parse(raw.toString('utf8', 8, 8 + n));
    assert.deepEqual(header.a, { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] });
    assert.deepEqual(header.scalar, { dtype: 'F32', shape: [], data_offsets: [24, 28] });
    assert.deepEqual(header.__metadata__, { format: 'pt' });
    assert.equal(raw.readFloatLE(8 + n + 4), -2.5, 'little-endian row-major data');
    const st = await SafetensorsFile.open(file);
    try {
      assert.deepEqual(st.metadata, { format: 'pt' });
      assert.ok(Buffer.from((await st.readF32('a')).buffer).equals(Buffer.from(a.buffer)));
      assert.deepEqual([...(await st.readF32('scalar'))], [7]);
      assert.equal((await st.readF32('empty')).length, 0);
      await assert.rejects(st.readF32('nope'), /no tensor named 'nope'/);
    } finally {
      await st.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: F16, BF16 and F64 tensors are read as float32', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-st-'));
  try {
    const f16 = Buffer.alloc(10);
    [0x3c00, 0xc000, 0x0001, 0x7c00, 0x3555].forEach((h, i) => f16.writeUInt16LE(h, 2 * i));
    const bf16 = Buffer.alloc(4);
    bf16.writeUInt16LE(0x3f80, 0); // 1.0
    bf16.writeUInt16LE(0xc0a0, 2); // -5.0
    const f64 = Buffer.alloc(8);
    f64.writeDoubleLE(0.1);
    const file = path.join(dir, 'h.safetensors');
    writeFileSync(
      file,
      rawFile(
        {
          h: { dtype: 'F16', shape: [5], data_offsets: [0, 10] },
          b: { dtype: 'BF16', shape: [2], data_offsets: [10, 14] },
          d: { dtype: 'F64', shape: [1], data_offsets: [14, 22] },
          i: { dtype: 'I32', shape: [1], data_offsets: [22, 26] },
        },
        Buffer.concat([f16, bf16, f64, Buffer.alloc(4)]),
      ),
    );
    const st = await SafetensorsFile.open(file);
    try {
      assert.deepEqual([...(await st.readF32('h'))], [1, -2, 2 ** -24, Infinity, f16ToF32(0x3555)]);
      assert.ok(Math.abs(f16ToF32(0x3555) - 1 / 3) < 1e-3);
      assert.deepEqual([...(await st.readF32('b'))], [1, -5]);
      assert.deepEqual([...(await st.readF32('d'))], [Math.fround(0.1)]);
      await assert.rejects(st.readF32('i'), /'i' is I32, expected a floating-point tensor/);
    } finally {
      await st.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors: damaged files are refused with the file and the reason', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-st-'));
  try {
    const t = (o: [number, number], shape = [2]) => ({ dtype: 'F32', shape, data_offsets: o });
    const cases: [string, Buffer, RegExp][] = [
      ['short', Buffer.alloc(5), /shorter than the 8-byte header length/],
      ['hugeheader', rawFile({}, Buffer.alloc(0), 1n << 40n), /header length \d+ is over/],
      ['cut-header', rawFile({ a: t([0, 8]) }, Buffer.alloc(8), 10_000n), /truncated: header says 10000 bytes/],
      ['badjson', Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{x}')]), /not valid JSON/],
      ['truncated', rawFile({ a: t([0, 8]) }, Buffer.alloc(5)), /truncated: tensors need 8 data bytes, the file has 5/],
      ['overlap', rawFile({ a: t([0, 8]), b: t([4, 12]) }, Buffer.alloc(12)), /'b' overlaps the tensor before it/],
      ['hole', rawFile({ a: t([0, 8]), b: t([12, 20]) }, Buffer.alloc(20)), /unused bytes before tensor 'b'/],
      ['size', rawFile({ a: t([0, 12]) }, Buffer.alloc(12)), /'a' F32\[2\] needs 8 bytes but data_offsets span 12/],
      ['reversed', rawFile({ a: t([8, 0]) }, Buffer.alloc(8)), /'a' has bad data_offsets \[8,0\]/],
      ['dtype', rawFile({ a: { dtype: 'F33', shape: [1], data_offsets: [0, 4] } }, Buffer.alloc(4)), /unknown dtype "F33"/],
      ['trailing', rawFile({ a: t([0, 8]) }, Buffer.alloc(9)), /1 bytes after the last tensor/],
      ['meta', rawFile({ __metadata__: { k: 1 } }, Buffer.alloc(0)), /'__metadata__' must map strings to strings/],
    ];
    for (const [name, bytes, re] of cases) {
      const file = path.join(dir, `${name}.safetensors`);
      writeFileSync(file, bytes);
      await assert.rejects(
        SafetensorsFile.open(file),
        (e: Error) => e instanceof UserError && e.message.startsWith(file) && re.test(e.message),
        name,
      );
    }
    await assert.rejects(SafetensorsFile.open(path.join(dir, 'missing.safetensors')), /cannot open \(ENOENT\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
