import type { SplitName, TrainData } from './train-local.js';

interface ReaderModule {
  openDataset(dir: string): Promise<{
    manifest: { labelSet: string; image: { height: number; width: number } };
    labelNames: readonly string[];
    split(name: SplitName): TrainData['split'] extends (n: SplitName) => infer R ? R : never;
  }>;
}

/** A dataset directory (shared/dataset format) as the trainer's view of it. */
export async function openTrainData(dir: string): Promise<TrainData> {
  const spec = '../shared/dataset/reader.js';
  const { openDataset } = (await import(spec)) as ReaderModule;
  const ds = await openDataset(dir);
  const { height, width } = ds.manifest.image;
  if (height !== width) throw new Error(`${dir}: images are ${height}x${width}; the model needs square images`);
  return { labelNames: ds.labelNames, labelSet: ds.manifest.labelSet, imageSize: height, split: (n) => ds.split(n) };
}
