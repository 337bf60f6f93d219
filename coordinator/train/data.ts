import { UserError } from '../../shared/util/errors.js';
import { openDataset } from '../../shared/dataset/reader.js';
import type { TrainData } from './config.js';

/** A dataset directory (shared/dataset format) as the trainer's view of it; close() releases its shard files. */
export async function openTrainData(dir: string): Promise<TrainData & { close(): Promise<void> }> {
  const ds = await openDataset(dir);
  const { height, width } = ds.manifest.image;
  if (height !== width) {
    await ds.close();
    throw new UserError(`${dir}: images are ${height}x${width}; the model needs square images (prepare with --image-size)`);
  }
  return {
    labelNames: ds.labelNames,
    labelSet: ds.manifest.labelSet,
    imageSize: height,
    split: (n) => ds.split(n),
    close: () => ds.close(),
  };
}
