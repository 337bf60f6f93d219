import { checkpointDue, checkpointsDir, commitCheckpoint, pruneCheckpoints, stepDir } from '../../shared/checkpoint/index.js';
import type { ShardWritten } from '../../shared/checkpoint/shard-writer.js';
import type { ParamLayout } from '../../shared/params.js';
import type { Logger } from '../../shared/util/log.js';
import type { Sampler } from '../job/sampler.js';
import type { TrainingMetrics } from '../ops/metrics-server.js';
import type { CheckpointFlags } from './checkpoint-flags.js';

/**
 * The coordinator's side of checkpoints: it decides after which steps the ranks save (the feed
 * tells them), collects their shard reports and commits each checkpoint once all are in.
 */
export class CheckpointCommits {
  private readonly root: string;
  private readonly schedule: { everySteps: number; everyMinutes: number };
  private last: { step: number; lastAtMs: number };
  private readonly shards = new Map<number, ShardWritten[]>();
  private committing: Promise<unknown> = Promise.resolve();
  /** The step directory of the newest committed checkpoint ('' before the first). */
  lastCommitted = '';

  constructor(
    private readonly o: {
      out: string;
      startStep: number;
      endStep: number;
      flags: Partial<CheckpointFlags>;
      world: number;
      sampler: Sampler;
      samplerInfo: { seed: number; globalBatch: number; size: number };
      config: unknown;
      layout: ParamLayout;
      /** The entries the ranks keep no moments for (--freeze). */
      frozen: readonly string[];
      metrics: TrainingMetrics;
      log: Logger;
    },
  ) {
    this.root = checkpointsDir(o.out);
    this.schedule = { everySteps: o.flags.checkpointEvery ?? 0, everyMinutes: o.flags.checkpointEveryMinutes ?? 0 };
    this.last = { step: o.startStep, lastAtMs: Date.now() };
  }

  /** Whether the ranks save after `step` (0-based): the run's last step always. */
  readonly after = (step: number): boolean => {
    const S = step + 1;
    const due =
      S === this.o.endStep || checkpointDue(this.schedule, { step: S, lastStep: this.last.step, lastAtMs: this.last.lastAtMs }, Date.now());
    if (due) this.last = { step: S, lastAtMs: Date.now() };
    return due;
  };

  /** A rank's shard report; the last one of a step commits its checkpoint (in step order). */
  readonly onShard = (w: ShardWritten): void => {
    const got = [...(this.shards.get(w.step) ?? []), w];
    this.shards.set(w.step, got);
    if (got.length < this.o.world) return;
    this.shards.delete(w.step);
    const t0 = performance.now();
    const dir = stepDir(this.root, w.step);
    const pos = this.o.sampler.positionAt(w.step);
    this.committing = this.committing.then(async () => {
      await commitCheckpoint(dir, {
        step: w.step,
        epoch: pos.epoch,
        sampler: { ...pos, ...this.o.samplerInfo },
        rng: {
          seed: this.o.samplerInfo.seed,
          note: 'the sampler and label smoothing are pure functions of (seed, epoch, index): no state to save',
        },
        config: this.o.config,
        layout: this.o.layout,
        frozen: this.o.frozen,
        world: this.o.world,
        shards: got,
      });
      await pruneCheckpoints(this.root, this.o.flags.keepCheckpoints ?? 3);
      this.o.metrics.observeCheckpoint('save', Math.max(...got.map((g) => g.seconds ?? 0)) + (performance.now() - t0) / 1000, w.step);
      this.lastCommitted = dir;
      this.o.log.info(`checkpoint ${dir} committed`);
    });
  };

  /** Every started commit done; throws if the job's final checkpoint (the run's end, or `finalStep` where a signal stopped it) is not among them. */
  async settled(finalStep = this.o.endStep): Promise<string> {
    await this.committing;
    if (this.lastCommitted !== stepDir(this.root, finalStep)) throw new Error(`the final checkpoint (step ${finalStep}) was not committed`);
    return this.lastCommitted;
  }

  /**
   * A restart in place from the checkpoint of `step`: reports of the failed generation's unfinished
   * saves are dropped (that step is saved again), and the schedule counts from `step`.
   */
  async restartAt(step: number): Promise<void> {
    await this.drain();
    this.committing = Promise.resolve();
    this.shards.clear();
    this.last = { step, lastAtMs: Date.now() };
  }

  /** Wait for the commits in flight, ignoring their failure (the job failed already). */
  async drain(): Promise<void> {
    await this.committing.catch(() => {});
  }
}
