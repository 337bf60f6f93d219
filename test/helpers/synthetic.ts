import { mkdir } from 'node:fs/promises';
import { mulberry32 } from '../../shared/random/generators.js';
import { DatasetWriter } from '../../shared/dataset/writer.js';
import type { SplitName, TrainData } from '../../coordinator/train/config.js';

/**
 * An in-memory learnable dataset: label l present draws a bright square in cell l of a grid,
 * on noise; labels are 1/0 with a few -1 and NaN so the policies are exercised.
 */
export function syntheticData(opts: {
  size: number;
  labels: string[];
  labelSet?: string;
  counts: Record<SplitName, number>;
  seed: number;
  uncertain?: number;
}): TrainData {
  const { size, labels } = opts;
  const L = labels.length;
  const grid = Math.ceil(Math.sqrt(L));
  const cell = Math.floor(size / grid);
  const make = (n: number, seed: number) => {
    const rand = mulberry32(seed);
    const images = new Uint8Array(n * size * size);
    const lab = new Float32Array(n * L);
    for (let i = 0; i < n; i++) {
      const img = images.subarray(i * size * size, (i + 1) * size * size);
      for (let k = 0; k < img.length; k++) img[k] = 40 + Math.floor(rand() * 60);
      for (let l = 0; l < L; l++) {
        const on = rand() < 0.35;
        const u = rand();
        lab[i * L + l] = u < (opts.uncertain ?? 0) ? -1 : u < 2 * (opts.uncertain ?? 0) ? NaN : on ? 1 : 0;
        if (!on) continue;
        const gy = Math.floor(l / grid) * cell;
        const gx = (l % grid) * cell;
        for (let y = gy + 1; y < gy + cell - 1; y++)
          for (let x = gx + 1; x < gx + cell - 1; x++) img[y * size + x] = 200 + Math.floor(rand() * 55);
      }
    }
    return { images, labels: lab };
  };
  const splits = {
    train: make(opts.counts.train, opts.seed),
    val: make(opts.counts.val, opts.seed + 1),
    test: make(opts.counts.test, opts.seed + 2),
  };
  return {
    labelNames: labels,
    labelSet: opts.labelSet ?? 'synthetic',
    imageSize: size,
    split(name: SplitName) {
      const s = splits[name];
      const n = opts.counts[name];
      return {
        length: n,
        async read(indices: ArrayLike<number>) {
          const m = indices.length;
          const images = new Uint8Array(m * size * size);
          const out = new Float32Array(m * L);
          for (let j = 0; j < m; j++) {
            const i = indices[j]!;
            images.set(s.images.subarray(i * size * size, (i + 1) * size * size), j * size * size);
            out.set(s.labels.subarray(i * L, (i + 1) * L), j * L);
          }
          return { n: m, images, labels: out };
        },
      };
    },
  };
}

/** Write an in-memory dataset as a dataset directory (shared/dataset format), for the trainer's real path. */
export async function writeDataset(dir: string, data: TrainData): Promise<void> {
  await mkdir(dir, { recursive: true });
  const w = new DatasetWriter(dir, { height: data.imageSize, width: data.imageSize, labelSet: data.labelSet, labels: data.labelNames });
  const px = data.imageSize * data.imageSize;
  const L = data.labelNames.length;
  for (const split of ['train', 'val', 'test'] as const) {
    const s = data.split(split);
    const b = await s.read(Array.from({ length: s.length }, (_, i) => i));
    for (let i = 0; i < b.n; i++)
      await w.add(split, {
        image: b.images.subarray(i * px, (i + 1) * px),
        labels: b.labels.subarray(i * L, (i + 1) * L),
        subjectId: `${split}-p${i}`,
        studyId: `${split}-s${i}`,
        path: `${split}/${i}.png`,
      });
  }
  await w.finish({ createdBy: 'test/helpers/synthetic.ts', source: { kind: 'test-synthetic' } });
}
