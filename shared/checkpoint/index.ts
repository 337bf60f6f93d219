/** Sharded checkpoints: formats and protocol in docs/checkpoints.md. */
export { layoutHash, stepDirName, shardFileName } from './format.js';
export { writeShard, type ShardData, type ShardWritten } from './shard-writer.js';
export { CheckpointWriter, type SaveOptions, type WriterStats } from './checkpoint-writer.js';
export {
  checkpointsDir,
  stepDir,
  commitCheckpoint,
  readManifest,
  listCheckpoints,
  pruneCheckpoints,
  removeUncommitted,
  type CheckpointManifest,
  type CommitInput,
  type ShardRecord,
} from './manifest.js';
export {
  loadCheckpoint,
  resolveCheckpoint,
  verifyShards,
  checkpointCandidates,
  CheckpointCorruptError,
  type LoadOptions,
  type LoadedCheckpoint,
  type ResolveOptions,
} from './load.js';
export { ShardReader } from './shard-reader.js';
export { checkpointDue, type CheckpointSchedule, type ScheduleState } from './schedule.js';
export { loadInitWeights, openClipTensors, openClipShape, type InitWeights } from '../interop/open-clip.js';
