import type { ThreadedProcessGroup } from '../collectives/threaded-group.js';
import type { StepComm } from './forward-backward.js';

/** The forward-backward's collectives on the train step's process group, timing the embedding all-gathers. */
export interface TimedComm extends StepComm {
  /** Seconds in all-gathers since the last reset. */
  gatherSeconds: number;
}

/**
 * `rowCounts`: the rows of every global batch on each rank (the data-parallel trainer cuts every
 * global batch with shardRange), so a gathered buffer's per-rank lengths follow from its width.
 */
export function groupComm(pg: ThreadedProcessGroup | null, rank: number, world: number, rowCounts: readonly number[]): TimedComm {
  const countsOf = (local: Float32Array): number[] => {
    const width = local.length / rowCounts[rank]!;
    if (!Number.isInteger(width)) throw new Error(`train step: gathering ${local.length} values from ${rowCounts[rank]} rows`);
    return rowCounts.map((c) => c * width);
  };
  return {
    rank,
    world,
    rowCounts,
    gatherSeconds: 0,
    async allGather(local) {
      if (!pg) return local;
      const t0 = performance.now();
      const out = await pg.allGatherV(local, countsOf(local));
      this.gatherSeconds += (performance.now() - t0) / 1000;
      return out;
    },
    allGatherSync(local) {
      if (!pg) return local;
      const t0 = performance.now();
      const out = pg.allGatherVSync(local, countsOf(local));
      this.gatherSeconds += (performance.now() - t0) / 1000;
      return out;
    },
    async allReduceSum(buf) {
      if (pg) await pg.allReduce(buf);
    },
  };
}
