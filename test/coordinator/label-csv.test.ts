import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { readFileSync } from 'node:fs';
import sharp from 'sharp';
import { readLabelCsv } from '../../coordinator/data/label-csv.js';
import { locateImages } from '../../coordinator/data/locate.js';
import { runPrepare } from '../../coordinator/data/prepare.js';
import { firstInvalidUtf8 } from '../../shared/dataset/csv.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { SPLITS } from '../../shared/dataset/manifest.js';
import { teamSharedDir } from '../../shared/util/paths.js';

const NIH_HEADER = 'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position';
const CHEXPERT_LABELS =
  'No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices';
const BLANKS = ','.repeat(14);

async function withDir(f: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-labels-'));
  try {
    await f(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('firstInvalidUtf8: stray continuation, overlong, surrogate, cut-off and valid text', () => {
  const b = (...x: number[]) => Uint8Array.from(x);
  assert.equal(firstInvalidUtf8(Buffer.from('héllo ✓ 𝄞')), Buffer.byteLength('héllo ✓ 𝄞'));
  assert.equal(firstInvalidUtf8(b(0x41, 0x80)), 1);
  assert.equal(firstInvalidUtf8(b(0x41, 0xc0, 0x80)), 1);
  assert.equal(firstInvalidUtf8(b(0xed, 0xa0, 0x80)), 0);
  assert.equal(firstInvalidUtf8(b(0x41, 0x42, 0xe2, 0x9c)), 2);
  assert.equal(firstInvalidUtf8(b(0xff)), 0);
});

test('label CSV: invalid UTF-8 anywhere is an error naming line and column, plain or gzip, in any chunk', async () => {
  await withDir(async (dir) => {
    const good = `${NIH_HEADER}\n00000001_000.png,No Finding,0,1,50,M,PA\n`;
    const bad = Buffer.concat([
      Buffer.from(good),
      Buffer.from('00000002_000.png,No Finding,0,2,5'),
      Buffer.of(0xff),
      Buffer.from('0,M,PA\n'),
    ]);
    const plain = path.join(dir, 'a.csv');
    await writeFile(plain, bad);
    await assert.rejects(readLabelCsv(plain, 'nih'), { message: `${plain}:3:34: invalid UTF-8; save the CSV as UTF-8` });
    const gz = path.join(dir, 'a.csv.gz');
    await writeFile(gz, gzipSync(bad));
    await assert.rejects(readLabelCsv(gz, 'nih'), { message: `${gz}:3:34: invalid UTF-8; save the CSV as UTF-8` });
    // Past the first 1 MiB chunk, with a valid multi-byte character split across the chunk boundary.
    const rows = [NIH_HEADER];
    for (let i = 0; rows.join('\n').length < (1 << 20) + 5000; i++)
      rows.push(`${String(i + 1).padStart(8, '0')}_000.png,No Finding,0,${i + 1},5,M,PA`);
    const big = Buffer.from(rows.join('\n') + '\n');
    const cut = (1 << 20) - 1;
    const withChar = Buffer.concat([big.subarray(0, cut), Buffer.from('é'), big.subarray(cut)]);
    const line = withChar.subarray(0, cut).toString().split('\n').length;
    const late = Buffer.concat([
      withChar,
      Buffer.from('99999999_000.png,No Finding,0,99999999,5,'),
      Buffer.of(0xc3, 0x28),
      Buffer.from(',PA\n'),
    ]);
    const file = path.join(dir, 'big.csv');
    await writeFile(file, late);
    await assert.rejects(readLabelCsv(file, 'nih'), (e: Error) => {
      const m = /:(\d+):(\d+): invalid UTF-8/.exec(e.message);
      return m !== null && Number(m[1]) === rows.length + 1 && Number(m[2]) === 42 && line > 1;
    });
  });
});

test('NIH: Patient ID must be a number equal to the image name patient prefix', async () => {
  await withDir(async (dir) => {
    const csv = async (row: string) => {
      const f = path.join(dir, 'l.csv');
      await writeFile(f, `${NIH_HEADER}\n00000001_000.png,No Finding,0,1,50,M,PA\n${row}\n`);
      return f;
    };
    await assert.rejects(
      readLabelCsv(await csv('00000003_004.png,No Finding,0,3x,50,M,PA'), 'nih'),
      /l\.csv:3: 'Patient ID' '3x' is not a number/,
    );
    await assert.rejects(
      readLabelCsv(await csv('00000003_004.png,No Finding,0,4,50,M,PA'), 'nih'),
      /l\.csv:3: 'Patient ID' 4 differs from the patient of image 00000003_004\.png \(3\)/,
    );
    await assert.rejects(
      readLabelCsv(await csv('scan.png,No Finding,0,3,50,M,PA'), 'nih'),
      /l\.csv:3: 'Image Index' 'scan\.png' is not an NIH image name/,
    );
    const ok = await readLabelCsv(await csv('00000003_004.png,No Finding,0,3,50,M,PA'), 'nih');
    assert.equal(ok.rows[1]!.subjectId, '00000003');
  });
});

test('CheXpert/MIMIC: a subject_id that disagrees with the path or the image folder is an error', async () => {
  await withDir(async (dir) => {
    const f = path.join(dir, 'c.csv');
    await writeFile(f, `Path,subject_id,${CHEXPERT_LABELS}\nCheXpert-v1.0-small/train/patient00007/study1/view1_frontal.jpg,8${BLANKS}\n`);
    await assert.rejects(readLabelCsv(f, 'chexpert'), /c\.csv:2: 'subject_id' '8' differs from the patient of 'Path'/);
    const m = path.join(dir, 'm.csv');
    await writeFile(m, `subject_id,study_id,dicom_id,${CHEXPERT_LABELS}\n10000031,52,d1${BLANKS}\nabc,52,d2${BLANKS}\n`);
    await assert.rejects(readLabelCsv(m, 'chexpert'), /m\.csv:3: 'subject_id' 'abc' is not a number/);
    await writeFile(m, `subject_id,study_id,dicom_id,${CHEXPERT_LABELS}\n10000031,52,d1${BLANKS}\n`);
    const table = await readLabelCsv(m, 'chexpert');
    const img = path.join(dir, 'img', 'files', 'p10', 'p10000030', 's52');
    await mkdir(img, { recursive: true });
    await writeFile(path.join(img, 'd1.jpg'), '');
    await assert.rejects(
      locateImages(table, path.join(dir, 'img')),
      /m\.csv:2: subject_id\/study_id 10000031\/52, but image .*d1\.jpg is in the folder of patient 10000030, study 52/,
    );
  });
});

/** Every prepared split's patients, recomputed from the stored image path, never in two splits. */
async function assertPatientsApart(out: string, patientOf: (p: string) => string): Promise<number> {
  const ds = await openDataset(out);
  const where = new Map<string, string>();
  try {
    for (const s of SPLITS) {
      const sr = ds.split(s);
      if (sr.length === 0) continue;
      const b = await sr.read(Array.from({ length: sr.length }, (_, i) => i));
      for (let i = 0; i < b.n; i++) {
        const p = patientOf(b.paths[i]!);
        assert.equal(Number(p), Number(b.subjectIds[i]!.replace(/^patient/, '')), `${b.paths[i]}: subject id ${b.subjectIds[i]}`);
        assert.ok(!where.has(p) || where.get(p) === s, `patient ${p} in ${where.get(p)} and ${s}`);
        where.set(p, s);
      }
    }
  } finally {
    await ds.close();
  }
  return where.size;
}

test('no patient is in two splits, for every format: NIH (real subset), CheXpert (real label rows), MIMIC-CXR', async () => {
  await withDir(async (dir) => {
    const prep = (format: 'nih' | 'chexpert', labels: string, images: string, out: string) =>
      runPrepare({
        format,
        labels,
        images,
        out,
        imageSize: 16,
        fractions: { val: 0.2, test: 0.3 },
        seed: 3,
        overwrite: false,
        progress: false,
      });
    const tiny = await sharp(Buffer.alloc(16 * 16, 100), { raw: { width: 16, height: 16, channels: 1 } })
      .png()
      .toBuffer();

    const nih = path.join(teamSharedDir, 'data', 'nih-cxr14-1000');
    await prep('nih', path.join(nih, 'labels.csv'), path.join(nih, 'images'), path.join(dir, 'nih'));
    const nihPatients = await assertPatientsApart(path.join(dir, 'nih'), (p) => /(\d+)_\d+\.png$/.exec(p)![1]!);
    assert.ok(nihPatients > 100);

    // The first 400 rows of the real CheXpert label file, each with a tiny image at its Path.
    const text = gunzipSync(readFileSync(path.join(teamSharedDir, 'data', 'chexpert-labels', 'chexpert_train.csv.gz'))).toString();
    const lines = text.split('\n').slice(0, 401);
    const root = path.join(dir, 'cx-images');
    for (const l of lines.slice(1)) {
      const f = path.join(root, l.split(',')[0]!);
      await mkdir(path.dirname(f), { recursive: true });
      await writeFile(f, tiny);
    }
    await writeFile(path.join(dir, 'cx.csv'), lines.join('\n') + '\n');
    await prep('chexpert', path.join(dir, 'cx.csv'), root, path.join(dir, 'cx'));
    assert.ok((await assertPatientsApart(path.join(dir, 'cx'), (p) => /patient(\d+)\//.exec(p)![1]!)) > 100);

    const mimic = path.join(dir, 'mimic');
    const rows = [`subject_id,study_id,dicom_id,${CHEXPERT_LABELS}`];
    for (let i = 0; i < 60; i++) {
      const sub = String(10000000 + Math.floor(i / 3));
      const study = String(50000000 + Math.floor(i / 2));
      const d = path.join(mimic, 'files', `p${sub.slice(0, 2)}`, `p${sub}`, `s${study}`);
      await mkdir(d, { recursive: true });
      await writeFile(path.join(d, `dicom${i}.jpg`), tiny);
      rows.push(`${sub},${study},dicom${i}${BLANKS}`);
    }
    await writeFile(path.join(dir, 'mimic.csv'), rows.join('\n') + '\n');
    await prep('chexpert', path.join(dir, 'mimic.csv'), mimic, path.join(dir, 'mimic-out'));
    assert.equal(await assertPatientsApart(path.join(dir, 'mimic-out'), (p) => /\/p(\d+)\/s\d+\//.exec(p)![1]!), 20);
  });
});
