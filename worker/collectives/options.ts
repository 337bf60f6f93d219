import { endianness } from 'node:os';
import { UserError } from '../../shared/util/errors.js';
import { type Wire, WIRES } from './codec.js';

export interface ProcessGroupOptions {
  rank: number;
  world: number;
  /** One per rank, `tcp://host:port` or `ipc:///path`; this rank binds its own and connects to the others. */
  endpoints: string[];
  /** A peer that sends nothing the current collective needs for this long fails it (default 30000). */
  timeoutMs?: number;
  /** Largest message payload; buffers are cut into chunks of at most this many bytes (default 1 MiB). */
  chunkBytes?: number;
  /** Default wire format of allReduce and reduceScatter (default fp32). */
  wire?: Wire;
  /** Collectives up to this many bytes use the one-hop exchange instead of the ring (default 32 KiB; 0: always the ring). */
  exchangeMaxBytes?: number;
  /** libzmq I/O threads for this group's sockets (default: the shared context, one thread). */
  ioThreads?: number;
  /** Kernel send and receive buffer of every socket (SO_SNDBUF/SO_RCVBUF), bytes (default 256 KiB; 0: the OS's autotuning). */
  socketBufferBytes?: number;
  /** Move bulk data to a ring successor on the same host through shared memory (default true unless CXR_SHM_DISABLE=1; see shm.ts). */
  sharedMemory?: boolean;
  /** Where the shared-memory segments live (default /dev/shm; must be a tmpfs). */
  shmDir?: string;
  /** Chunk size of rings whose every link is in shared memory (default 4 MiB; see DEFAULT_SHM_CHUNK_BYTES). */
  shmChunkBytes?: number;
  /**
   * fp32 all-reduces through buffers every rank maps, when all ranks share a host and the addon is
   * built (default true; off with sharedMemory). See "Shared buffers" in docs/collectives.md.
   */
  sharedBuffers?: boolean;
}

/** Which path this rank's bulk data takes to its ring successor and from its predecessor, and why. */
export interface DataPath {
  send: 'shared-memory' | 'socket';
  receive: 'shared-memory' | 'socket';
  /** Why a link is on the socket, when one is (null when both use shared memory, or world is 1). */
  note: string | null;
  /** Chunk size the rings use. */
  chunkBytes: number;
  /** How a large fp32 allReduce runs: through buffers all ranks map, or on the ring. */
  allReduce: 'shared-buffers' | 'ring';
}

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_CHUNK_BYTES = 1 << 20;
/**
 * Through shared memory a chunk costs its two copies plus two ZeroMQ messages (descriptor and
 * release) that wake both ranks' threads; the copies do not care about the size, the messages do,
 * so the chunk is larger there (docs/performance.md, "Collectives").
 */
export const DEFAULT_SHM_CHUNK_BYTES = 4 << 20;

export function validateOptions(o: ProcessGroupOptions): void {
  if (endianness() !== 'LE') throw new UserError('collectives: tensors travel as little-endian bytes; this host is big-endian');
  if (!Number.isInteger(o.world) || o.world < 1 || o.world > 65535)
    throw new UserError(`collectives: world must be an integer in 1..65535, got ${o.world}`);
  if (!Number.isInteger(o.rank) || o.rank < 0 || o.rank >= o.world)
    throw new UserError(`collectives: rank must be in 0..${o.world - 1}, got ${o.rank}`);
  if (!Array.isArray(o.endpoints) || o.endpoints.length !== o.world)
    throw new UserError(
      `collectives: need one endpoint per rank (${o.world}), got ${Array.isArray(o.endpoints) ? o.endpoints.length : 'none'}`,
    );
  o.endpoints.forEach((e, r) => {
    if (typeof e !== 'string' || !/^(tcp:\/\/[^\s]+:\d+|ipc:\/\/\S+)$/.test(e))
      throw new UserError(`collectives: endpoint of rank ${r} is '${String(e)}'; use tcp://host:port or ipc:///path`);
  });
  if (new Set(o.endpoints).size !== o.endpoints.length) throw new UserError('collectives: endpoints must be distinct, one per rank');
  if (o.timeoutMs !== undefined && (!Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0))
    throw new UserError(`collectives: timeoutMs must be positive, got ${o.timeoutMs}`);
  if (o.chunkBytes !== undefined && (!Number.isInteger(o.chunkBytes) || o.chunkBytes < 4 || o.chunkBytes > 256 << 20))
    throw new UserError(`collectives: chunkBytes must be an integer in 4..${256 << 20}, got ${o.chunkBytes}`);
  if (o.shmChunkBytes !== undefined && (!Number.isInteger(o.shmChunkBytes) || o.shmChunkBytes < 4 || o.shmChunkBytes > 256 << 20))
    throw new UserError(`collectives: shmChunkBytes must be an integer in 4..${256 << 20}, got ${o.shmChunkBytes}`);
  if (
    o.socketBufferBytes !== undefined &&
    (!Number.isInteger(o.socketBufferBytes) || o.socketBufferBytes < 0 || o.socketBufferBytes > 1 << 30)
  )
    throw new UserError(`collectives: socketBufferBytes must be an integer in 0..${1 << 30}, got ${o.socketBufferBytes}`);
  if (o.sharedMemory !== undefined && typeof o.sharedMemory !== 'boolean')
    throw new UserError(`collectives: sharedMemory must be true or false, got '${String(o.sharedMemory)}'`);
  if (o.sharedBuffers !== undefined && typeof o.sharedBuffers !== 'boolean')
    throw new UserError(`collectives: sharedBuffers must be true or false, got '${String(o.sharedBuffers)}'`);
  if (o.shmDir !== undefined && (typeof o.shmDir !== 'string' || !o.shmDir.startsWith('/')))
    throw new UserError(`collectives: shmDir must be an absolute path, got '${String(o.shmDir)}'`);
  if (o.wire !== undefined && !WIRES.includes(o.wire))
    throw new UserError(`collectives: wire must be one of ${WIRES.join(', ')}, got '${String(o.wire)}'`);
}
