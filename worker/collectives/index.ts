/** Collective communication over ZeroMQ (docs/collectives.md). */
export {
  ProcessGroup,
  CollectiveError,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_SOCKET_BUFFER_BYTES,
  EXCHANGE_MAX_BYTES,
  DEFAULT_SHM_CHUNK_BYTES,
} from './process-group.js';
export type { ProcessGroupOptions, CollectiveErrorCode, DataPath } from './process-group.js';
export type { Wire } from './codec.js';
export { packBuckets, flattenInto, unflattenFrom } from './buckets.js';
export type { Bucket } from './buckets.js';
export { reductionOrder, referenceSum } from './algorithms/schedule.js';
