import { CheckpointWriter, checkpointsDir, layoutHash, stepDir } from '../../shared/checkpoint/index.js';
import type { ParamLayout } from '../../shared/params.js';
import type { ControlSession } from '../control-client.js';
import type { FlatRange } from './adamw.js';

/**
 * A rank's checkpoint shards: training waits only for the previous save and the copy-out; the
 * write runs in the background and reports itself to the coordinator, which commits once every
 * rank has.
 */
export class ShardSaver {
  private readonly writer = new CheckpointWriter();
  private readonly layoutHash: string;
  private saving: Promise<void> = Promise.resolve();

  constructor(
    private readonly o: { out: string; rank: number; world: number; own: FlatRange; control: ControlSession },
    layout: ParamLayout,
  ) {
    this.layoutHash = layoutHash(layout);
  }

  /** Save the state after step `S` (counted from 1); the run's `last` save is reported before this returns. */
  async save(S: number, params: Float32Array, m: Float32Array, v: Float32Array, last: boolean): Promise<void> {
    await this.saving;
    await this.writer.idle();
    const { rank, world, own } = this.o;
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
