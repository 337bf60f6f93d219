import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import { parseArgs } from 'node:util';
import { configureDecoder, decodeGray } from '../coordinator/data/decode.js';
import { runPrepare } from '../coordinator/data/prepare.js';
import { drawAnatomy, renderStudy } from '../coordinator/data/synth-image.js';
import { Prng } from '../shared/random/generators.js';
import { readManifest, SPLITS } from '../shared/dataset/manifest.js';
import { shardBytes, verifyShards } from '../shared/dataset/verify.js';

/**
 * `npm run bench -- prepare [--count 5000] [--source-size 256] [--image-size 64] [--reps 2]`
 *
 * Writes `count` grayscale PNGs (chest-like pictures of source-size pixels) and a NIH-format CSV
 * into a temp folder, then times, alternately and `reps` times each:
 *  - bare: decodeGray (sharp, the exact settings of prepare) over every file with the same
 *    number of images in flight, results dropped;
 *  - prepare: the full `data prepare` (CSV, image index, patient split, decode, Arrow shards with
 *    sha256, fsync, rename);
 *  - verify: the check training runs before step 0 (every shard's sha256 against the manifest).
 * Prints the best rate of each and prepare's share of the bare rate (goal: at least 80%).
 */
export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      count: { type: 'string', default: '5000' },
      'source-size': { type: 'string', default: '256' },
      'image-size': { type: 'string', default: '64' },
      reps: { type: 'string', default: '2' },
    },
  });
  const count = Number(values.count);
  const src = Number(values['source-size']);
  const size = Number(values['image-size']);
  const reps = Number(values.reps);
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-bench-prepare-'));
  try {
    const t0 = performance.now();
    const { files, csv } = await makeFolder(dir, count, src);
    process.stdout.write(
      `prepare bench: ${count} PNG files of ${src}x${src} written in ${((performance.now() - t0) / 1000).toFixed(1)} s; ` +
        `${availableParallelism()} cores, output ${size}x${size}\n`,
    );
    const { inFlight } = configureDecoder();
    let bare = 0;
    let full = 0;
    for (let r = 0; r < reps; r++) {
      const tb = performance.now();
      await decodeAll(files, size, inFlight);
      const b = count / ((performance.now() - tb) / 1000);
      const out = path.join(dir, `out-${r}`);
      const tp = performance.now();
      await runPrepare({
        format: 'nih',
        labels: csv,
        images: path.join(dir, 'images'),
        out,
        imageSize: size,
        fractions: { val: 0.1, test: 0.2 },
        seed: 0,
        overwrite: false,
        progress: false,
      });
      const prepS = (performance.now() - tp) / 1000;
      const p = count / prepS;
      // What training adds before step 0: every shard against the manifest's sha256.
      const manifest = await readManifest(out);
      const tv = performance.now();
      await verifyShards(out, manifest, SPLITS);
      const verS = (performance.now() - tv) / 1000;
      const mb = shardBytes(manifest, SPLITS) / 1e6;
      rmSync(out, { recursive: true, force: true });
      process.stdout.write(
        `  rep ${r + 1}: bare decode+resize ${b.toFixed(0)} images/s, prepare ${p.toFixed(0)} images/s; ` +
          `verify ${mb.toFixed(1)} MB in ${verS.toFixed(2)} s (${(mb / verS).toFixed(0)} MB/s, ${((100 * verS) / prepS).toFixed(1)}% of prepare)\n`,
      );
      bare = Math.max(bare, b);
      full = Math.max(full, p);
    }
    process.stdout.write(`bare decode+resize (sharp, ${inFlight} in flight): ${bare.toFixed(0)} images/s (best of ${reps})\n`);
    process.stdout.write(`data prepare (full pipeline):              ${full.toFixed(0)} images/s (best of ${reps})\n`);
    process.stdout.write(`prepare / bare: ${((100 * full) / bare).toFixed(1)}% (goal >= 80%)\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function decodeAll(files: string[], size: number, inFlight: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < files.length) await decodeGray(files[next++]!, size);
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
}

/** `count` PNGs under images/NNN/ (varied pictures: 64 renders, each with per-file noise) and a NIH CSV. */
async function makeFolder(dir: string, count: number, src: number): Promise<{ files: string[]; csv: string }> {
  const rng = new Prng(1);
  const bases: Uint8Array[] = [];
  for (let i = 0; i < 64; i++) {
    const img = new Uint8Array(src * src);
    renderStudy(img, src, drawAnatomy(rng), new Set(), rng);
    bases.push(img);
  }
  const files: string[] = [];
  const rows = ['Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position'];
  const jobs: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) {
    const patient = 1 + Math.floor(i / 3);
    const name = `${String(patient).padStart(8, '0')}_${String(i % 3).padStart(3, '0')}.png`;
    const sub = path.join(dir, 'images', String(Math.floor(i / 1000)).padStart(3, '0'));
    if (i % 1000 === 0) mkdirSync(sub, { recursive: true });
    const file = path.join(sub, name);
    const px = Buffer.from(bases[i % bases.length]!);
    for (let k = 0; k < px.length; k += 1 + (k % 7)) px[k] = (px[k]! + rng.int(9)) & 255;
    jobs.push(
      sharp(px, { raw: { width: src, height: src, channels: 1 } })
        .png()
        .toFile(file),
    );
    if (jobs.length >= 8) await Promise.all(jobs.splice(0));
    files.push(file);
    rows.push(`${name},${i % 4 === 0 ? 'Effusion' : 'No Finding'},${i % 3},${patient},50,F,PA`);
  }
  await Promise.all(jobs);
  const csv = path.join(dir, 'Data_Entry_2017.csv');
  writeFileSync(csv, rows.join('\n') + '\n');
  return { files, csv };
}
