import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import sharp from 'sharp';
import { coordinatorEntry, teamSharedDir } from '../../shared/util/paths.js';
import { openDataset } from '../../shared/dataset/reader.js';
import { readManifest, SPLITS } from '../../shared/dataset/manifest.js';
import { decodeGray } from '../../coordinator/data/decode.js';
import { loadLabelSet } from '../../shared/labels.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The real CLI, as a user runs it. */
function cli(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [coordinatorEntry, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CXR_LOG_LEVEL: 'warn' },
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function tempDir(t: { after(fn: () => void): void }): string {
  const d = mkdtempSync(path.join(tmpdir(), 'cxr-data-cli-'));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Nothing left behind: neither the output nor a temp sibling of it. */
function assertNoOutput(out: string): void {
  assert.equal(existsSync(out), false, `${out} must not exist`);
  const parent = path.dirname(out);
  if (existsSync(parent) && statSync(parent).isDirectory()) {
    const leftovers = readdirSync(parent).filter((f) => f.startsWith(`.${path.basename(out)}.tmp-`));
    assert.deepEqual(leftovers, [], 'temp directories left behind');
  }
}

async function png(file: string, seed: number, size = 40): Promise<void> {
  const px = Buffer.alloc(size * size);
  for (let i = 0; i < px.length; i++) px[i] = (i * 13 + seed * 29) & 255;
  mkdirSync(path.dirname(file), { recursive: true });
  await sharp(px, { raw: { width: size, height: size, channels: 1 } })
    .png()
    .toFile(file);
}

const NIH_HEADER = 'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position';

/** A small NIH-format folder: 12 images of 6 patients in nested folders, and its CSV. */
async function nihFixture(dir: string): Promise<{ csv: string; images: string }> {
  const images = path.join(dir, 'images');
  const rows = [NIH_HEADER];
  const findings = ['No Finding', 'Cardiomegaly', 'Effusion|Atelectasis', 'No Finding', 'Pneumothorax', 'Mass|Nodule'];
  for (let i = 0; i < 12; i++) {
    const patient = 100 + Math.floor(i / 2);
    const name = `${String(patient).padStart(8, '0')}_${String(i % 2).padStart(3, '0')}.png`;
    await png(path.join(images, i % 3 === 0 ? 'a' : 'b/c', name), i);
    rows.push(`${name},${findings[i % findings.length]},${i % 2},${patient},50,M,PA`);
  }
  const csv = path.join(dir, 'labels.csv');
  writeFileSync(csv, rows.join('\n') + '\n');
  return { csv, images };
}

function prepareArgs(f: { csv: string; images: string }, out: string, format = 'nih'): string[] {
  return ['data', 'prepare', '--format', format, '--labels', f.csv, '--images', f.images, '--out', out, '--image-size', '16'];
}

test('data synth: a deterministic dataset per seed, split by patient, refused over an existing one without --overwrite', async (t) => {
  const d = tempDir(t);
  const a = path.join(d, 'a');
  const r = await cli(['data', 'synth', '--out', a, '--count', '150', '--image-size', '32', '--seed', '5']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /wrote 150 synthetic images/);
  assert.equal((await cli(['data', 'synth', '--out', path.join(d, 'b'), '--count', '150', '--image-size', '32', '--seed', '5'])).code, 0);
  assert.equal((await cli(['data', 'synth', '--out', path.join(d, 'c'), '--count', '150', '--image-size', '32', '--seed', '6'])).code, 0);
  const [ma, mb, mc] = await Promise.all(['a', 'b', 'c'].map((x) => readManifest(path.join(d, x))));
  const sums = (m: typeof ma) => SPLITS.flatMap((s) => m.splits[s].shards.map((x) => x.sha256));
  assert.deepEqual(sums(ma), sums(mb), 'same seed, same bytes');
  assert.notDeepEqual(sums(ma), sums(mc), 'another seed, other data');
  assert.equal(ma.labelSet, 'chexpert14');
  assert.deepEqual(ma.image, { height: 32, width: 32, channels: 1, dtype: 'uint8' });

  const ds = await openDataset(a);
  const patients = new Map<string, string>();
  let total = 0;
  for (const s of SPLITS) {
    const sr = ds.split(s);
    total += sr.length;
    const b = await sr.read(Array.from({ length: sr.length }, (_, i) => i));
    for (const p of b.subjectIds) {
      assert.ok(!patients.has(p) || patients.get(p) === s, `patient ${p} in ${patients.get(p)} and ${s}`);
      patients.set(p, s);
    }
    for (const v of b.labels) assert.ok(v === 1 || v === 0 || v === -1 || Number.isNaN(v), `label value ${v}`);
  }
  await ds.close();
  assert.equal(total, 150);
  assert.ok(patients.size < 150, 'several studies per patient');

  const again = await cli(['data', 'synth', '--out', a, '--count', '10']);
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /already exists: pass --overwrite/);
  const over = await cli(['data', 'synth', '--out', a, '--count', '10', '--overwrite']);
  assert.equal(over.code, 0, over.stderr);
  assert.equal(
    (await readManifest(a)).splits.train.rows + (await readManifest(a)).splits.val.rows + (await readManifest(a)).splits.test.rows,
    10,
  );
  assert.deepEqual(
    readdirSync(d).filter((f) => f.startsWith('.')),
    [],
    'no temp directories left',
  );
});

test('data inspect: verifies every shard, and a corrupted shard fails naming the file', async (t) => {
  const d = tempDir(t);
  const ds = path.join(d, 'ds');
  assert.equal((await cli(['data', 'synth', '--out', ds, '--count', '40', '--image-size', '16'])).code, 0);
  const ok = await cli(['data', 'inspect', ds]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /shards: 3 of 3 verified/);
  const js = JSON.parse((await cli(['data', 'inspect', ds, '--json'])).stdout);
  assert.equal(js.ok, true);
  assert.equal(js.manifest.splits.train.rows + js.manifest.splits.val.rows + js.manifest.splits.test.rows, 40);
  const shard = path.join(ds, 'train-00000.arrow');
  const bytes = readFileSync(shard);
  bytes[bytes.length >> 1] ^= 0xff;
  writeFileSync(shard, bytes);
  const bad = await cli(['data', 'inspect', ds]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /corrupt shard.*train-00000\.arrow \(sha256/);
});

test('data prepare on the real NIH subset: 1,000 rows, labels as in the CSV, pixels as decoded, no patient in two splits', async (t) => {
  const root = path.join(teamSharedDir, 'data', 'nih-cxr14-1000');
  const d = tempDir(t);
  const out = path.join(d, 'nih');
  const r = await cli([
    'data',
    'prepare',
    '--format',
    'nih',
    '--labels',
    path.join(root, 'labels.csv'),
    '--images',
    path.join(root, 'images'),
    '--out',
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /wrote 1000 images/);
  assert.match(r.stdout, /patients/);
  const m = await readManifest(out);
  assert.equal(m.labelSet, 'nih14');
  assert.equal(m.labels.length, 15);
  const n = SPLITS.reduce((a, s) => a + m.splits[s].rows, 0);
  assert.equal(n, 1000);
  // Fractions are of images, filled by whole patients.
  assert.ok(
    Math.abs(m.splits.test.rows - 200) < 40 && Math.abs(m.splits.val.rows - 100) < 40,
    JSON.stringify(SPLITS.map((s) => m.splits[s].rows)),
  );

  const csv = readFileSync(path.join(root, 'labels.csv'), 'utf8').trim().split('\n').slice(1);
  const want = new Map(csv.map((l) => [l.split(',')[0]!, l.split(',')[1]!.split('|')]));
  const ds = await openDataset(out);
  const seen = new Map<string, string>();
  let positives = 0;
  for (const s of SPLITS) {
    const sr = ds.split(s);
    const b = await sr.read(Array.from({ length: sr.length }, (_, i) => i));
    for (let i = 0; i < b.n; i++) {
      const name = path.basename(b.paths[i]!);
      const findings = want.get(name);
      assert.ok(findings, `${name} is not in labels.csv`);
      want.delete(name);
      const got = m.labels.filter((_, k) => b.labels[i * m.labels.length + k] === 1);
      assert.deepEqual(got.sort(), [...findings].sort(), name);
      assert.ok(
        [...b.labels.subarray(i * 15, i * 15 + 15)].every((v) => v === 0 || v === 1),
        'NIH labels are 0/1',
      );
      positives += got.length;
      const p = b.subjectIds[i]!;
      assert.ok(!seen.has(p) || seen.get(p) === s, `patient ${p} in ${seen.get(p)} and ${s}`);
      seen.set(p, s);
      assert.equal(name.slice(0, 8), p, 'patient id from Patient ID, zero-padded as in the file names');
    }
    if (s === 'test') {
      const expect = await decodeGray(path.join(root, 'images', b.paths[0]!), 64);
      assert.deepEqual(b.images.subarray(0, 64 * 64), expect, 'stored pixels are the decoded image');
    }
  }
  await ds.close();
  assert.equal(want.size, 0, 'every CSV row is in the dataset');
  assert.equal(seen.size, m.splits.train.patients + m.splits.val.patients + m.splits.test.patients);
  // Counts from shared/data/README.md: No Finding 499, Effusion 170.
  const total = (l: string) => SPLITS.reduce((a, s) => a + m.splits[s].positives[l]!, 0);
  assert.equal(total('No Finding'), 499);
  assert.equal(total('Effusion'), 170);
  assert.ok(positives > 1000);
});

test('data prepare --format chexpert: Path column, gzip CSV, JPEG and 16-bit PNG, -1 and blank kept', async (t) => {
  const d = tempDir(t);
  const images = path.join(d, 'root');
  const base = 'CheXpert-v1.0-small/train';
  const px = Buffer.alloc(30 * 24 * 3, 90);
  mkdirSync(path.join(images, base, 'patient00001', 'study1'), { recursive: true });
  mkdirSync(path.join(images, base, 'patient00002', 'study1'), { recursive: true });
  await sharp(px, { raw: { width: 24, height: 30, channels: 3 } })
    .jpeg()
    .toFile(path.join(images, base, 'patient00001/study1/view1_frontal.jpg'));
  const g = Buffer.alloc(24 * 30, 200);
  await sharp(g, { raw: { width: 24, height: 30, channels: 1 } })
    .toColourspace('grey16')
    .png()
    .toFile(path.join(images, base, 'patient00002/study1/view1_frontal.png'));
  await sharp(g, { raw: { width: 24, height: 30, channels: 1 } })
    .png()
    .toFile(path.join(images, base, 'patient00002/study1/view2_lateral.png'));
  const labels = loadLabelSet('chexpert14').labels;
  const csv = [
    `Path,Sex,Age,Frontal/Lateral,AP/PA,${labels.join(',')}`,
    `${base}/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0`,
    `${base}/patient00002/study1/view1_frontal.png,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,`,
    `${base}/patient00002/study1/view2_lateral.png,Female,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,`,
  ].join('\r\n');
  const csvFile = path.join(d, 'train.csv.gz');
  writeFileSync(csvFile, gzipSync(csv));
  const out = path.join(d, 'cx');
  const r = await cli([...prepareArgs({ csv: csvFile, images }, out, 'chexpert'), '--test-fraction', '0', '--val-fraction', '0']);
  assert.equal(r.code, 0, r.stderr);
  const ds = await openDataset(out);
  assert.equal(ds.manifest.labelSet, 'chexpert14');
  const b = await ds.split('train').read([0, 1, 2]);
  assert.deepEqual(b.subjectIds, ['patient00001', 'patient00002', 'patient00002']);
  assert.deepEqual(b.studyIds, ['patient00001/study1', 'patient00002/study1', 'patient00002/study1']);
  const row = (i: number) => [...b.labels.subarray(i * 14, i * 14 + 14)].map((v) => (Number.isNaN(v) ? 'NaN' : v));
  assert.deepEqual(row(0), [1, 'NaN', 'NaN', 'NaN', 'NaN', 'NaN', 'NaN', 'NaN', 'NaN', 0, 'NaN', 'NaN', 'NaN', 1]);
  assert.deepEqual(row(1), ['NaN', 'NaN', -1, 1, 'NaN', -1, -1, 'NaN', -1, 'NaN', -1, 'NaN', 1, 'NaN']);
  assert.equal(b.images[0], 90, 'grey JPEG decoded');
  assert.equal(b.images[16 * 16 + 5], 200, '16-bit PNG scaled to 8 bit');
  await ds.close();
});

test('data stats on the real 223,414-row CheXpert label file', async () => {
  const r = await cli([
    'data',
    'stats',
    '--format',
    'chexpert',
    '--labels',
    path.join(teamSharedDir, 'data', 'chexpert-labels', 'chexpert_train.csv.gz'),
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.equal(s.images, 223414);
  assert.equal(s.patients, 64540);
  assert.equal(s.studies, 187641);
  const edema = s.labels.find((l: { name: string }) => l.name === 'Edema');
  assert.deepEqual([edema.positive, edema.negative, edema.uncertain, edema.blank], [52246, 20726, 12984, 137458]);
  for (const l of s.labels) assert.equal(l.positive + l.negative + l.uncertain + l.blank, 223414);
});

/** Bad input: each must fail with a message naming the file and line or field, and leave nothing. */
const badInputs: { name: string; make: (d: string, f: { csv: string; images: string }) => Promise<string[]> | string[]; expect: RegExp }[] =
  [
    {
      name: 'missing image file',
      make: (d, f) => {
        rmSync(path.join(f.images, 'a/00000101_001.png'));
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /labels\.csv:5: image '00000101_001\.png' not found/,
    },
    {
      name: 'truncated image',
      make: (d, f) => {
        const p = path.join(f.images, 'b/c/00000102_001.png');
        const bytes = readFileSync(p);
        writeFileSync(p, bytes.subarray(0, bytes.length - 30));
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /00000102_001\.png \(.*labels\.csv:7\): not a readable PNG\/JPEG image/,
    },
    {
      name: 'non-image file',
      make: (d, f) => {
        writeFileSync(path.join(f.images, 'a/00000100_000.png'), 'this is text, not a PNG\n');
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /00000100_000\.png \(.*labels\.csv:2\): not a readable PNG\/JPEG image/,
    },
    {
      name: 'CSV missing required columns',
      make: (d, f) => {
        writeFileSync(f.csv, readFileSync(f.csv, 'utf8').replace('Patient ID', 'Patient'));
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /labels\.csv: missing required column 'Patient ID'/,
    },
    {
      name: 'unknown label value 2.0',
      make: (d) => {
        const csv = path.join(d, 'cx.csv');
        writeFileSync(
          csv,
          `Path,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices\ntrain/patient00001/study1/view1.jpg,1.0,,,,,2.0,,,,,,,,\n`,
        );
        return prepareArgs({ csv, images: d }, path.join(d, 'out'), 'chexpert');
      },
      expect: /cx\.csv:2: column 'Edema': unknown label value '2\.0'/,
    },
    {
      name: 'unknown finding name',
      make: (d, f) => {
        writeFileSync(f.csv, readFileSync(f.csv, 'utf8').replace('Cardiomegaly', 'Cardiomegally'));
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /labels\.csv:3: unknown finding 'Cardiomegally'/,
    },
    {
      name: 'duplicate image rows',
      make: (d, f) => {
        const lines = readFileSync(f.csv, 'utf8').trim().split('\n');
        writeFileSync(f.csv, [...lines, lines[4]].join('\n') + '\n');
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /labels\.csv:14: duplicate image '00000101_001\.png' \(first at line 5\)/,
    },
    {
      name: 'empty CSV',
      make: (d, f) => {
        writeFileSync(f.csv, '');
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /labels\.csv: empty CSV/,
    },
    {
      name: 'CSV with a header only',
      make: (d, f) => {
        writeFileSync(f.csv, NIH_HEADER + '\n');
        return prepareArgs(f, path.join(d, 'out'));
      },
      expect: /labels\.csv: the CSV has a header but no rows/,
    },
    {
      name: 'unknown --format',
      make: (d, f) => prepareArgs(f, path.join(d, 'out'), 'dicom'),
      expect: /format.*"dicom".*nih.*chexpert/s,
    },
    {
      name: 'unwritable --out',
      make: (d, f) => {
        writeFileSync(path.join(d, 'a-file'), 'x');
        return prepareArgs(f, path.join(d, 'a-file', 'out'));
      },
      expect: /--out .*a-file\/out: cannot create the output directory/,
    },
  ];

for (const c of badInputs) {
  test(`data prepare refuses bad input: ${c.name}`, async (t) => {
    const d = tempDir(t);
    const f = await nihFixture(d);
    const args = await c.make(d, f);
    const out = args[args.indexOf('--out') + 1]!;
    const r = await cli(args);
    assert.notEqual(r.code, 0, `exit code for ${c.name}`);
    assert.match(r.stderr, c.expect);
    assert.doesNotMatch(r.stderr, /internal error|\n\s+at /, 'a user error, not a stack trace');
    assertNoOutput(out);
  });
}

test('data prepare: the small NIH fixture works (the bad-input cases start from a valid input)', async (t) => {
  const d = tempDir(t);
  const f = await nihFixture(d);
  const out = path.join(d, 'out');
  const r = await cli(prepareArgs(f, out));
  assert.equal(r.code, 0, r.stderr);
  const m = await readManifest(out);
  assert.equal(
    SPLITS.reduce((a, s) => a + m.splits[s].rows, 0),
    12,
  );
  assert.deepEqual(m.image, { height: 16, width: 16, channels: 1, dtype: 'uint8' });
});

test('data prepare interrupted with SIGINT leaves no output and no temp directory', async (t) => {
  const root = path.join(teamSharedDir, 'data', 'nih-cxr14-1000');
  const d = tempDir(t);
  const out = path.join(d, 'nih');
  const p = spawn(
    process.execPath,
    [
      coordinatorEntry,
      'data',
      'prepare',
      '--format',
      'nih',
      '--labels',
      path.join(root, 'labels.csv'),
      '--images',
      path.join(root, 'images'),
      '--out',
      out,
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  p.stderr.on('data', (chunk) => {
    stderr += chunk;
    // The first progress line means shards are being written into the temp directory.
    if (/prepare: \d+\/1000/.test(stderr) && !p.killed) p.kill('SIGINT');
  });
  const code = await new Promise<number | null>((resolve) => p.on('close', (c) => resolve(c)));
  assert.equal(code, 130, stderr);
  assert.match(stderr, /interrupted \(SIGINT\); removed the partial output/);
  assertNoOutput(out);
});

test('data prepare --format chexpert with MIMIC-CXR columns: images found by dicom_id, patient from subject_id', async (t) => {
  const d = tempDir(t);
  const images = path.join(d, 'mimic');
  const labels = loadLabelSet('chexpert14').labels;
  const rows = [`subject_id,study_id,dicom_id,${labels.join(',')}`];
  for (let i = 0; i < 4; i++) {
    const sub = `1000003${i >> 1}`;
    const dicom = `d${i}-abc`;
    const dir = path.join(images, 'files', 'p10', `p${sub}`, `s5${i}`);
    mkdirSync(dir, { recursive: true });
    await sharp(Buffer.alloc(20 * 20, 40 * i), { raw: { width: 20, height: 20, channels: 1 } })
      .jpeg()
      .toFile(path.join(dir, `${dicom}.jpg`));
    rows.push(`${sub},5${i},${dicom},${i === 0 ? '1.0' : ''},,,,,${i === 1 ? '-1.0' : ''},,,,,,,,`);
  }
  const csv = path.join(d, 'mimic-cxr-chexpert.csv');
  writeFileSync(csv, rows.join('\n') + '\n');
  const out = path.join(d, 'out');
  const r = await cli([...prepareArgs({ csv, images }, out, 'chexpert'), '--val-fraction', '0', '--test-fraction', '0']);
  assert.equal(r.code, 0, r.stderr);
  const ds = await openDataset(out);
  const b = await ds.split('train').read([0, 1, 2, 3]);
  assert.deepEqual(b.subjectIds, ['10000030', '10000030', '10000031', '10000031']);
  assert.deepEqual(b.studyIds, ['10000030/50', '10000030/51', '10000031/52', '10000031/53']);
  assert.equal(b.paths[3], path.join('files', 'p10', 'p10000031', 's53', 'd3-abc.jpg'));
  assert.equal(b.labels[0], 1);
  assert.equal(b.labels[14 + 5], -1);
  assert.ok(Number.isNaN(b.labels[1]!));
  await ds.close();
});
