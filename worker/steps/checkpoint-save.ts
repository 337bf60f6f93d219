import { CheckpointWriter, checkpointsDir, layoutHash, stepDir } from '../../shared/checkpoint/index.js';
import type { ParamLayout } from '../../shared/params.js';
import { shardRange, type ShardRange } from '../../shared/shard.js';
import type { ControlSession } from '../control-client.js';

/**
 * A rank's checkpoint shards: training waits only for the previous save and the copy-out; the
 * write runs in the background and reports itself to the coordinator, which commits once every
 * rank has.
 */
export class ShardSaver {
  private readonly writer = new CheckpointWriter();
  private readonly layoutHash: string;
  /** The rank's range of the flat parameter vector. */
  private readonly own: ShardRange;
  private saving: Promise<void> = Promise.resolve();

  constructor(
    /** packed: the moments are the rank's range of the packed trainable vector (--freeze). */
    private readonly o: { out: string; rank: number; world: number; packed: boolean; control: ControlSession },
    layout: ParamLayout,
  ) {
    this.layoutHash = layoutHash(layout);
    this.own = shardRange(layout.total, o.world, o.rank);
  }

  /** Save the state after step `S` (counted from 1): the whole vector, this rank's moments; the run's `last` save is reported before this returns. */
  async save(S: number, params: Float32Array, m: Float32Array, v: Float32Array, last: boolean): Promise<void> {
    await this.saving;
    await this.writer.idle();
    const { rank, world, packed } = this.o;
    const own = this.own;
    const save = this.writer
      .save(stepDir(checkpointsDir(this.o.out), S), {
        rank,
        world,
        step: S,
        layoutHash: this.layoutHash,
        start: own.start,
        end: own.end,
        params: params.subarray(own.start, own.end),
        m,
        v,
        packed,
      })
      .then((w) => this.o.control.commitCheckpoint(w));
    this.saving = save;
    save.catch(() => {}); // rethrown at the next checkpoint or the end
    // The run's last checkpoint is reported before the last step, so the coordinator commits it before the job ends.
    if (last) await save;
  }

  async close(): Promise<void> {
    await this.writer.close().catch(() => {});
  }
}
