import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { openDataset, type Dataset } from '../../shared/dataset/reader.js';
import type { SplitName } from '../../shared/dataset/manifest.js';
import { aurocReport } from '../../shared/metrics/auroc.js';
import { writeRunEmbeddings } from '../../shared/run/embeddings.js';
import { shardRanges } from '../../shared/shard.js';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import { scoreRows } from '../../model/predict.js';
import type { RunConfig } from '../../model/train-config.js';
import type { CxrModel } from '../../model/vit.js';
import type { ThreadedProcessGroup } from '../collectives/threaded-group.js';

/**
 * Evaluation during training: every rank scores its shardRange of the eval split, the scores are
 * all-gathered, and rank 0 computes AUROC (bootstrap) and writes the file, with the test split's
 * embeddings after the last step (text head).
 */
export class Evaluator {
  private dataset: Dataset | null = null;

  constructor(
    private readonly model: CxrModel,
    private readonly run: RunConfig,
    private readonly pg: ThreadedProcessGroup | null,
    private readonly o: { rank: number; world: number; seed: number },
  ) {}

  /** Score the eval split (if any) and, on rank 0, write `file`: the final evaluation or one of `step`, `epoch`. */
  async evaluate(file: string, final: boolean, step: number, epoch: number): Promise<void> {
    const run = this.run;
    if (run.eval === 'none') return;
    const r = await this.scoreSplit(run.eval, final && run.eval === 'test');
    if (this.o.rank !== 0) return;
    const labelNames = run.resolved.model.labels;
    const rep = aurocReport(
      { scores: r.scores, labels: r.labels, n: r.n, labelNames },
      run.resolved.competition,
      run.bootstrap > 0 ? { replicates: run.bootstrap, seed: this.o.seed } : undefined,
    );
    await writeJsonAtomic(path.join(run.out, file), final ? { split: run.eval, ...rep } : { split: run.eval, step, epoch, ...rep });
    if (r.embeddings && run.resolved.model.head === 'text') {
      const names = tf.tidy(() => {
        const e = this.model.encodeText().names;
        return tf.div(e, tf.norm(e, 'euclidean', 1, true));
      });
      const labelEmbeddings = Float32Array.from(await names.data());
      names.dispose();
      await writeRunEmbeddings(run.out, { labels: labelNames, labelEmbeddings, testEmbeddings: r.embeddings, testLabels: r.labels });
    }
  }

  /** Every rank's scores (and labels, embeddings) of the split, in row order. */
  private async scoreSplit(split: SplitName, withEmbeddings: boolean) {
    const { rank, world } = this.o;
    this.dataset ??= await openDataset(this.run.data);
    const reader = this.dataset.split(split);
    const { labels: names, embedDim: D } = this.model.config;
    const rows = shardRanges(reader.length, world);
    const mine = await scoreRows(this.model, reader, rows[rank]!, { chunk: 128, scores: true, embeddings: withEmbeddings });
    const gather = async (x: Float32Array, width: number) =>
      this.pg
        ? this.pg.allGatherV(
            x,
            rows.map((r) => (r.end - r.start) * width),
          )
        : x;
    const scores = await gather(mine.scores!, names.length);
    const labels = await gather(mine.labels, names.length);
    const embeddings = mine.embeddings ? await gather(mine.embeddings, D) : null;
    return { n: reader.length, scores, labels, embeddings };
  }

  async close(): Promise<void> {
    await this.dataset?.close();
  }
}
