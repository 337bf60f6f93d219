import * as path from 'node:path';
import { UserError, errorMessage } from '../../shared/util/errors.js';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import type { Manifest } from '../../shared/dataset/manifest.js';
import { splitPatients, checkFractions, type SplitFractions } from '../../shared/dataset/split.js';
import { buildDirAtomically, checkOutputDir } from './output-dir.js';
import { configureDecoder, decodeGray } from './decode.js';
import { FORMATS, readLabelCsv, type LabelFormat } from './label-csv.js';
import { locateImages } from './locate.js';
import { createProgress } from '../../shared/util/progress.js';

export interface PrepareOptions {
  format: LabelFormat;
  labels: string;
  images: string;
  out: string;
  imageSize: number;
  fractions: SplitFractions;
  seed: number;
  overwrite: boolean;
  /** Show a progress bar (TTY) or lines; false in benchmarks. */
  progress?: boolean;
}

export function checkPrepareOptions(o: PrepareOptions): void {
  if (!(FORMATS as readonly string[]).includes(o.format))
    throw new UserError(`unknown --format '${o.format}': use one of ${FORMATS.join(', ')}`);
  if (!Number.isInteger(o.imageSize) || o.imageSize < 8 || o.imageSize > 2048)
    throw new UserError(`--image-size must be an integer in 8..2048, got ${o.imageSize}`);
  if (!Number.isInteger(o.seed) || o.seed < 0 || o.seed > 0xffffffff)
    throw new UserError(`--seed must be an integer in 0..4294967295, got ${o.seed}`);
  checkFractions(o.fractions);
}

/**
 * `data prepare`: label CSV + image folder -> dataset directory. Labels and image paths are
 * checked in full before the first image is decoded (a typo fails in seconds, not after an
 * hour); then images are decoded several at a time and written in CSV order, each into its
 * patient's split. Everything goes to a temp directory that is renamed at the end.
 */
export async function runPrepare(o: PrepareOptions): Promise<Manifest> {
  checkPrepareOptions(o);
  await checkOutputDir(o.out, o.overwrite);
  const table = await readLabelCsv(o.labels, o.format);
  const files = await locateImages(table, o.images);
  const perPatient = new Map<string, number>();
  for (const r of table.rows) perPatient.set(r.subjectId, (perPatient.get(r.subjectId) ?? 0) + 1);
  const split = splitPatients(perPatient, o.fractions, o.seed);
  const { inFlight } = configureDecoder();
  const size = o.imageSize;
  const rootAbs = path.resolve(o.images);

  return buildDirAtomically(o.out, o.overwrite, async (tmp) => {
    const w = new DatasetWriter(tmp, { height: size, width: size, labelSet: table.labelSet.name, labels: table.labelSet.labels });
    const progress = o.progress === false ? null : createProgress({ label: 'prepare', total: table.rows.length, unit: 'images' });
    const n = table.rows.length;
    const decode = (i: number): Promise<Uint8Array> => {
      const p = decodeGray(files[i]!, size).catch((e: unknown) => {
        throw new UserError(`${files[i]} (${table.file}:${table.rows[i]!.line}): not a readable PNG/JPEG image (${errorMessage(e)})`);
      });
      // Failures surface when awaited in order; this keeps early failures of later images quiet.
      p.catch(() => undefined);
      return p;
    };
    const window: Promise<Uint8Array>[] = [];
    try {
      let started = 0;
      while (started < Math.min(n, inFlight)) window.push(decode(started++));
      for (let i = 0; i < n; i++) {
        const image = await window.shift()!;
        if (started < n) window.push(decode(started++));
        const r = table.rows[i]!;
        await w.add(split.get(r.subjectId)!, {
          image,
          labels: r.labels,
          subjectId: r.subjectId,
          studyId: r.studyId,
          path: path.relative(rootAbs, path.resolve(files[i]!)),
        });
        progress?.increment();
      }
      progress?.stop();
      return await w.finish({
        createdBy: 'coordinator data prepare',
        source: {
          kind: o.format,
          labels: path.resolve(o.labels),
          images: rootAbs,
          imageSize: size,
          aspect: 'cover: shorter side to size, centre crop',
          seed: o.seed,
          valFraction: o.fractions.val,
          testFraction: o.fractions.test,
        },
      });
    } catch (e) {
      progress?.stop();
      await Promise.allSettled(window);
      await w.abort();
      throw e;
    }
  });
}
