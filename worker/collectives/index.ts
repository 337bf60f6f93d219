/** Collective communication over ZeroMQ and shared memory (docs/collectives.md). */
export { ProcessGroup } from './process-group.js';
export { CollectiveError } from './errors.js';
export type { CollectiveErrorCode } from './errors.js';
export { DEFAULT_TIMEOUT_MS, DEFAULT_CHUNK_BYTES, DEFAULT_SHM_CHUNK_BYTES } from './options.js';
export type { ProcessGroupOptions, DataPath } from './options.js';
export { DEFAULT_SOCKET_BUFFER_BYTES } from './transport/zmq.js';
export { EXCHANGE_MAX_BYTES } from './algorithms/exchange.js';
export type { Wire } from './codec.js';
export { packBuckets, flattenInto, unflattenFrom } from './buckets.js';
export type { Bucket } from './buckets.js';
export { reductionOrder, referenceSum } from './algorithms/schedule.js';
