import type { Dataset } from '../../shared/dataset/reader.js';
import { encodeBatch } from '../../shared/dataset/wire.js';
import type { RowSource } from '../job/data-feed.js';

/** The training split of a dataset as the data feed's row source: rows read by index, encoded as Arrow IPC. */
export function datasetRowSource(ds: Dataset): RowSource {
  const train = ds.split('train');
  const labels = ds.labelNames.length;
  return {
    size: train.length,
    async encode(indices) {
      return encodeBatch(await train.read(indices), labels);
    },
  };
}
