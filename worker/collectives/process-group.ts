import { shardRange, shardRanges } from '../../shared/shard.js';
import { addF32From } from '../../kernels/simd/add.js';
import { shmNative, type ShmNative } from '../../native/addon.js';
import { type Wire, WIRES, wireBytes, encode, quantize, decodeAdd, decodeCopy } from './codec.js';
import {
  type Header,
  type Incoming,
  type OpKindName,
  MsgType,
  FLAG_ACK_REQ,
  FLAG_SHM,
  ForeignMessage,
  decodeMessage,
  encodeHeader,
} from './protocol.js';
import { CollectiveError } from './errors.js';
import {
  type DataPath,
  type ProcessGroupOptions,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_SHM_CHUNK_BYTES,
  DEFAULT_TIMEOUT_MS,
  validateOptions,
} from './options.js';
import { PeerLiveness } from './liveness.js';
import { DEFAULT_SOCKET_BUFFER_BYTES, type Outgoing, ZmqTransport } from './transport/zmq.js';
import { DEFAULT_SHM_DIR, ShmRegion, decodeDescriptor, type ShmPeer } from './transport/shm.js';
import { ShmLink } from './transport/shm-link.js';
import { type Plan, type PlanItem, type PlanRecv, ringPlan, broadcastPlan, segmentsFromCounts } from './algorithms/schedule.js';
import {
  type Exchange,
  EXCHANGE_MAX_BYTES,
  barrierExchange,
  gatherExchange,
  partProblem,
  partValues,
  sumExchange,
} from './algorithms/exchange.js';
import { sharedAllReduce, sharedRounds } from './algorithms/shared-buffers.js';

/**
 * Sends of the caller's memory that nothing later in the collective proves delivered are copied
 * when at most this big; bigger ones go zero-copy and the receiver acknowledges the last one.
 */
const COPY_MAX_BYTES = 64 << 10;
/** After a needed peer's connection drops, how long its already-sent messages may still trickle in. */
const LOST_GRACE_MS = 1000;
const MAX_FUTURE_OPS = 64;

interface ActiveOp {
  readonly kind: OpKindName;
  readonly generation: number;
  readonly seq: number;
  readonly label: string;
  readonly buf: Float32Array;
  readonly total: number;
  readonly wire: Wire;
  readonly plan: Plan;
  readonly sendsTotal: number;
  readonly ackNeeded: boolean;
  /** Sends from the caller's buffer at steps up to this one are proven delivered by later receives. */
  readonly protectedUpTo: number;
  readonly exchange: Exchange | null;
  readonly parts: (Float32Array | undefined)[];
  got: number;
  next: number;
  sendsIssued: number;
  sendsDone: number;
  acked: boolean;
  lastProgress: number;
  timer: NodeJS.Timeout | null;
  pinger: NodeJS.Timeout | null;
  settled: boolean;
  resolve(): void;
  reject(e: Error): void;
}

/**
 * A group of ranks running collectives, the way torch.distributed's ProcessGroup runs them over
 * its backends: this is the front end (the API, the handshake, the op engine that runs a plan's
 * messages with sequence numbers, generations and checks, and liveness and timeouts); the bytes
 * move through transport/ (ZeroMQ sockets; shared memory to a same-host ring neighbour), and what
 * moves when is algorithms/ (the ring and chain, the one-hop exchange, the shared buffers).
 * Collectives run one at a time in call order; every rank must call the same collectives in the
 * same order with matching sizes. See docs/collectives.md.
 */
export class ProcessGroup {
  readonly rank: number;
  readonly world: number;
  readonly endpoints: readonly string[];
  readonly timeoutMs: number;
  readonly chunkBytes: number;
  readonly wire: Wire;
  readonly exchangeMaxBytes: number;
  /** Messages dropped: not of this protocol, of an older generation or finished op. */
  readonly stats = { foreign: 0, stale: 0 };

  /** Chunk of the rings and chains: chunkBytes, or shmChunkBytes once every link is known to be in shared memory. */
  private chunkElems: number;
  private readonly shmChunkBytes: number;
  private readonly transport: ZmqTransport<ActiveOp>;
  private generation = 0;
  private nextSeq = 0;
  /** Ops of this generation numbered below this have finished; their late messages are stale. */
  private finishedSeq = 0;
  private active: ActiveOp | null = null;
  private broken: Error | null = null;
  private pendingFault: Error | null = null;
  private readonly future = new Map<string, Incoming[]>();
  private readonly liveness: PeerLiveness;
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;
  private hellos = new Map<number, unknown>();
  /** Peers that said BYE (they finished, so they have all this rank sent them) or acknowledged ours. */
  private readonly byeFrom = new Set<number>();
  private readonly byeAcked = new Set<number>();
  private byeWaiter: (() => void) | null = null;
  private helloWaiter: (() => void) | null = null;
  /** Peers' answers to this rank's HELLO: whether they opened its shared-memory segment. */
  private readonly links = new Map<number, unknown>();
  /** Peers' status after the answers: whether each sends to its successor through shared memory, and has mapped every rank's region. */
  private readonly peerStatus = new Map<number, { sending: boolean; regions: boolean }>();
  private readonly useShm: boolean;
  private readonly shmDir: string;
  /** The ring links through shared memory: this rank's segment to its successor, its predecessor's from it. */
  private readonly shmLink: ShmLink<ActiveOp>;
  private readonly shmNotes: string[] = [];
  /** Shared buffers: this rank's region, every rank's region mapped (own included), and whether all ranks have them. */
  private readonly useRegions: boolean;
  private native: ShmNative | null = null;
  private region: ShmRegion | null = null;
  private readonly regions: (Float32Array | null)[] = [];
  private regionsOn = false;
  /** Rounds run through the regions in this generation: which half a round uses. */
  private regionRound = 0;
  /** The sequence numbers of the shared-buffer all-reduce running now: one collective to its peers. */
  private sharedSpan: { generation: number; first: number; end: number } | null = null;

  private constructor(opts: ProcessGroupOptions) {
    this.rank = opts.rank;
    this.world = opts.world;
    this.endpoints = [...opts.endpoints];
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    this.wire = opts.wire ?? 'fp32';
    this.exchangeMaxBytes = opts.exchangeMaxBytes ?? EXCHANGE_MAX_BYTES;
    this.chunkElems = Math.floor(this.chunkBytes / 4);
    // Like NCCL_SHM_DISABLE: an operator can take every link back to the socket without a code change.
    this.useShm = opts.sharedMemory ?? process.env.CXR_SHM_DISABLE !== '1';
    this.shmChunkBytes = opts.shmChunkBytes ?? DEFAULT_SHM_CHUNK_BYTES;
    this.useRegions = this.useShm && (opts.sharedBuffers ?? true);
    this.shmDir = opts.shmDir ?? DEFAULT_SHM_DIR;
    this.liveness = new PeerLiveness(this.rank, this.endpoints, this.timeoutMs, Date.now());
    this.transport = new ZmqTransport<ActiveOp>(
      {
        rank: this.rank,
        endpoints: this.endpoints,
        timeoutMs: this.timeoutMs,
        maxMessageBytes: this.chunkBytes + 65536,
        ioThreads: opts.ioThreads,
        socketBufferBytes: opts.socketBufferBytes ?? DEFAULT_SOCKET_BUFFER_BYTES,
      },
      {
        message: (frames) => this.onFrames(frames),
        receiveFailed: (e) => this.receiveFailed(e),
        sent: (o) => this.sent(o),
        sendFailed: (peer, o, e) => this.sendFailed(peer, o, e),
        disconnected: (r) => this.peerDown(r),
        connected: (r) => this.liveness.connected(r),
      },
    );
    this.shmLink = new ShmLink<ActiveOp>(this.rank, this.world, {
      data: (op, header, descriptor) => this.transport.push(op.plan.to, { frames: [header, descriptor], op }),
      release: (to, body) =>
        this.transport.push(to, { frames: [this.header(MsgType.RELEASE, 'hello', 0, 0, 0, 0, 0, 'fp32'), body], op: null }),
    });
  }

  /** Binds this rank's endpoint, connects to the others and handshakes with every peer. */
  static async create(opts: ProcessGroupOptions): Promise<ProcessGroup> {
    validateOptions(opts);
    const pg = new ProcessGroup(opts);
    try {
      await pg.start();
    } catch (e) {
      await pg.close();
      throw e;
    }
    return pg;
  }

  private async start(): Promise<void> {
    const ep = this.endpoints[this.rank]!;
    await this.transport.bind();
    // From here to the handshake's waiter nothing may await: a HELLO taken before it is there is dropped.
    this.transport.receive();
    // The addon maps the segments (slots written and read as memory, an add reading the slot in
    // place) and the regions; without it the segments use pwrite/pread and there are no regions.
    const { addon, why } = this.world > 1 && (this.useShm || this.useRegions) ? shmNative() : { addon: null, why: '' };
    this.native = addon;
    if (this.useShm && this.world > 1) {
      try {
        this.shmLink.create(this.shmDir, Math.max(this.chunkBytes, this.shmChunkBytes), addon);
      } catch (e) {
        this.shmNotes.push(`no shared-memory segment: ${(e as Error).message}`);
      }
    } else if (this.world > 1) this.shmNotes.push('shared memory turned off');
    if (this.useRegions && this.world > 1) {
      if (!addon) this.shmNotes.push(`no shared buffers: ${why}`);
      else
        try {
          this.region = ShmRegion.create(this.shmDir, this.world, addon);
          this.regions[this.rank] = this.region.floats;
        } catch (e) {
          this.shmNotes.push(`no shared buffers: ${(e as Error).message}`);
        }
    }
    const hello = Buffer.from(
      JSON.stringify({
        world: this.world,
        rank: this.rank,
        chunkBytes: this.chunkBytes,
        endpoint: ep,
        shm: this.shmLink.offer(),
        region: this.region?.offer() ?? null,
      }),
    );
    for (let r = 0; r < this.world; r++)
      if (r !== this.rank)
        this.transport.push(r, { frames: [this.header(MsgType.HELLO, 'hello', 0, 0, 0, 0, 0, 'fp32'), hello], op: null });
    // Three rounds: HELLO (with this rank's segment and region), LINK answers (the successor opened
    // the segment or not), LINK status (whether each rank sends through shared memory and has mapped
    // every region), which every rank needs to pick the same ring chunk and all-reduce path.
    let statusSent = false;
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        const bad = [...this.hellos.entries()].map(([r, h]) => this.helloMismatch(r, h)).find((m) => m !== null);
        if (bad) {
          clearTimeout(timer);
          return reject(new CollectiveError(`rank ${this.rank}: handshake failed: ${bad}`, 'handshake'));
        }
        if (!statusSent && this.hellos.size === this.world - 1 && this.links.size === this.world - 1) {
          statusSent = true;
          this.settleShm();
          const regions = this.region !== null && this.endpoints.every((_, r) => this.regions[r]);
          const status = Buffer.from(JSON.stringify({ sending: this.shmLink.sending, regions }));
          this.regionsOn = regions;
          for (let r = 0; r < this.world; r++)
            if (r !== this.rank)
              this.transport.push(r, { frames: [this.header(MsgType.LINK, 'hello', 0, 0, 0, 0, 0, 'fp32'), status], op: null });
        }
        if (statusSent && this.peerStatus.size === this.world - 1) {
          clearTimeout(timer);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.helloWaiter = null;
        const missing = this.endpoints
          .map((e, r) => ({ e, r }))
          .filter(({ r }) => r !== this.rank && !(this.hellos.has(r) && this.links.has(r) && this.peerStatus.has(r)));
        reject(
          new CollectiveError(
            `rank ${this.rank}: handshake timed out after ${this.timeoutMs} ms: no answer from ${missing.map(({ r, e }) => `rank ${r} (${e})`).join(', ')}`,
            'handshake',
            missing[0]?.r,
          ),
        );
      }, this.timeoutMs);
      this.helloWaiter = check;
      check();
    });
    this.helloWaiter = null;
    // The chunk must be the same on every link of a ring (what arrives is forwarded chunk by
    // chunk), so the larger shared-memory chunk is used only when every rank sends that way.
    const peers = [...this.peerStatus.values()];
    if (this.world > 1 && this.shmLink.sending && peers.every((p) => p.sending))
      this.chunkElems = Math.floor(Math.max(this.chunkBytes, this.shmChunkBytes) / 4);
    // Every rank maps every region or none uses them: an all-reduce's path must be the same everywhere.
    this.regionsOn = this.regionsOn && peers.every((p) => p.regions);
    if (this.region && !this.regionsOn) this.shmNotes.push('no shared buffers: not every rank maps every region');
    this.region?.unlink();
    if (!this.regionsOn) this.regions.length = 0;
  }

  /** After the handshake's answers: whether this rank's successor reads its segment (ShmLink.settle). */
  private settleShm(): void {
    if (this.world === 1) return;
    const note = this.shmLink.settle(this.links.get(this.successor) as { shm?: unknown; reason?: unknown } | undefined);
    if (note) this.shmNotes.push(note);
  }

  /** The ring's neighbours: bulk data of every ring and chain goes to the successor, and comes from the predecessor. */
  private get successor(): number {
    return (this.rank + 1) % this.world;
  }

  private get predecessor(): number {
    return (this.rank - 1 + this.world) % this.world;
  }

  /** Which path bulk data takes on this rank's two ring links. */
  get dataPath(): DataPath {
    return {
      send: this.shmLink.sending ? 'shared-memory' : 'socket',
      receive: this.shmLink.receiving ? 'shared-memory' : 'socket',
      note: this.shmNotes.length > 0 ? this.shmNotes.join('; ') : null,
      chunkBytes: this.chunkElems * 4,
      allReduce: this.regionsOn ? 'shared-buffers' : 'ring',
    };
  }

  private helloMismatch(r: number, h: unknown): string | null {
    const o = h as { world?: unknown; rank?: unknown; chunkBytes?: unknown } | null;
    if (!o || typeof o !== 'object') return `rank ${r} (${this.endpoints[r]}) sent an unreadable hello`;
    if (o.world !== this.world) return `rank ${r} (${this.endpoints[r]}) has world size ${String(o.world)}, this rank ${this.world}`;
    if (o.rank !== r) return `the process at ${this.endpoints[r]} says it is rank ${String(o.rank)}, expected ${r}`;
    if (o.chunkBytes !== this.chunkBytes)
      return `rank ${r} (${this.endpoints[r]}) uses chunkBytes ${String(o.chunkBytes)}, this rank ${this.chunkBytes}`;
    return null;
  }

  // ---------------------------------------------------------------- collectives

  /** In-place sum over ranks; bit-identical on every rank (order: docs/collectives.md). */
  allReduce(buf: Float32Array, opts?: { wire?: Wire }): Promise<void> {
    const wire = opts?.wire ?? this.wire;
    if (!WIRES.includes(wire)) return Promise.reject(new RangeError(`allReduce: unknown wire format '${String(wire)}'`));
    const small = wire === 'fp32' && buf.byteLength <= this.exchangeMaxBytes;
    if (this.regionsOn && wire === 'fp32' && !small) return this.enqueueShared(buf);
    return this.enqueue(
      'allReduce',
      buf,
      buf.length,
      wire,
      this.world - 2,
      () => ringPlan('allReduce', this.world, this.rank, shardRanges(buf.length, this.world), this.chunkElems),
      small ? sumExchange(buf, 'allReduce') : null,
    );
  }

  /**
   * Sums over ranks and returns this rank's range, shardRange(buf.length, world, rank), as a view
   * into `buf`; the rest of `buf` is scratch afterwards.
   */
  async reduceScatter(buf: Float32Array): Promise<Float32Array> {
    const small = this.wire === 'fp32' && buf.byteLength <= this.exchangeMaxBytes;
    await this.enqueue(
      'reduceScatter',
      buf,
      buf.length,
      this.wire,
      -1,
      () => ringPlan('reduceScatter', this.world, this.rank, shardRanges(buf.length, this.world), this.chunkElems),
      small ? sumExchange(buf, 'reduceScatter') : null,
    );
    const { start, end } = shardRange(buf.length, this.world, this.rank);
    return buf.subarray(start, end);
  }

  /** Concatenation of every rank's `local` (all the same length) in rank order. */
  allGather(local: Float32Array): Promise<Float32Array> {
    return this.gather(
      'allGather',
      local,
      Array.from({ length: this.world }, () => local.length),
    );
  }

  /** Concatenation of every rank's `local` in rank order; rank r contributes `counts[r]` elements. */
  allGatherV(local: Float32Array, counts: number[]): Promise<Float32Array> {
    if (counts.length !== this.world) return Promise.reject(new RangeError(`allGatherV: ${counts.length} counts for world ${this.world}`));
    if (counts[this.rank] !== local.length)
      return Promise.reject(
        new RangeError(`allGatherV: rank ${this.rank} passes ${local.length} elements but counts[${this.rank}] is ${counts[this.rank]}`),
      );
    return this.gather('allGatherV', local, counts);
  }

  /**
   * allGatherV without a new array: `buf` holds this rank's part at its offset (counts[0] + ... +
   * counts[rank-1]) and receives every other rank's part at theirs. Same messages as allGatherV.
   */
  async allGatherVInPlace(buf: Float32Array, counts: number[]): Promise<void> {
    if (counts.length !== this.world) throw new RangeError(`allGatherVInPlace: ${counts.length} counts for world ${this.world}`);
    const total = counts.reduce((a, b) => a + b, 0);
    if (buf.length !== total)
      throw new RangeError(`allGatherVInPlace: rank ${this.rank} passes ${buf.length} elements but the counts add up to ${total}`);
    await this.gather('allGatherV', null, counts, buf);
  }

  private async gather(
    kind: 'allGather' | 'allGatherV' | 'barrier',
    local: Float32Array | null,
    counts: readonly number[],
    into?: Float32Array,
  ): Promise<Float32Array> {
    const segs = segmentsFromCounts(counts);
    const out = into ?? new Float32Array(segs[this.world - 1]!.end);
    if (local) out.set(local, segs[this.rank]!.start);
    const small = out.byteLength <= this.exchangeMaxBytes;
    await this.enqueue(
      kind,
      out,
      out.length,
      'fp32',
      -1,
      () => ringPlan('allGather', this.world, this.rank, segs, this.chunkElems),
      small ? gatherExchange(out, segs, this.rank) : null,
    );
    return out;
  }

  /** Copies `root`'s buffer into every rank's `buf` (all the same length). */
  broadcast(buf: Float32Array, root: number): Promise<void> {
    if (!Number.isInteger(root) || root < 0 || root >= this.world)
      return Promise.reject(new RangeError(`broadcast: root ${root} outside 0..${this.world - 1}`));
    return this.enqueue('broadcast', buf, buf.length, 'fp32', -1, () =>
      broadcastPlan(this.world, this.rank, root, buf.length, this.chunkElems),
    );
  }

  /** Resolves once every rank has entered the barrier. */
  async barrier(): Promise<void> {
    await this.gather(
      'barrier',
      new Float32Array([this.rank]),
      Array.from({ length: this.world }, () => 1),
    );
  }

  /**
   * Starts a new generation: the running and queued collectives reject, and messages of older
   * generations are dropped from now on. Every rank must call it once (the coordinator tells them)
   * before the group is used again after a failure.
   */
  abort(reason = 'aborted by the caller'): void {
    const err = new CollectiveError(`rank ${this.rank}: collectives of generation ${this.generation} aborted: ${reason}`, 'aborted');
    this.generation++;
    this.nextSeq = 0;
    this.regionRound = 0;
    if (this.active) this.fail(this.active, err, true);
    this.finishedSeq = 0;
    this.broken = null;
    this.pendingFault = null;
    for (const key of [...this.future.keys()]) if (Number(key.split('/')[0]) < this.generation) this.future.delete(key);
  }

  /**
   * Closes the sockets once the peers have everything this rank sent: a collective can finish
   * here while its last messages still sit in ZeroMQ's queues, and closing (or exiting) then would
   * lose them. So every peer gets a BYE behind the data and this waits (at most the timeout) for
   * its acknowledgement, or for the peer's own BYE: a peer that is closing has finished its
   * collectives, so it has received everything they needed. With `flush: false` (the job is
   * aborted: nothing sent still matters, and a stalled peer would never answer) it closes at once.
   */
  async close(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    if (this.active)
      this.fail(this.active, new CollectiveError(`rank ${this.rank}: process group closed during ${this.active.label}`, 'closed'), true);
    const peers = this.endpoints.map((_, r) => r).filter((r) => r !== this.rank);
    const pending = (): number[] =>
      peers.filter((r) => !this.byeFrom.has(r) && !this.byeAcked.has(r) && this.liveness.lostAt(r) === undefined);
    if (opts.flush !== false && this.helloWaiter === null && this.hellos.size === this.world - 1) {
      for (const r of pending())
        this.transport.push(r, {
          frames: [this.header(MsgType.BYE, 'hello', 0, 0, 0, 0, 0, 'fp32', FLAG_ACK_REQ), Buffer.alloc(0)],
          op: null,
        });
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.timeoutMs);
        this.byeWaiter = () => {
          if (pending().length > 0) return;
          clearTimeout(timer);
          resolve();
        };
        this.byeWaiter();
      });
      this.byeWaiter = null;
    }
    this.closed = true;
    this.transport.close();
    this.shmLink.close();
    this.region?.unlink();
    this.regions.length = 0;
    this.regionsOn = false;
  }

  // ---------------------------------------------------------------- shared buffers

  /**
   * An fp32 all-reduce through the regions every rank maps (algorithms/shared-buffers.ts). Its
   * barriers are one-hop exchanges with the usual sequence numbers, timeouts and failure notices.
   */
  private enqueueShared(buf: Float32Array): Promise<void> {
    if (this.closed) return Promise.reject(new CollectiveError(`rank ${this.rank}: allReduce on a closed process group`, 'closed'));
    if (buf.length > 0xffffffff) return Promise.reject(new RangeError(`allReduce: ${buf.length} elements exceed the protocol's 2^32-1`));
    const segs = shardRanges(buf.length, this.world);
    const block = this.region!.blockElems;
    const rounds = sharedRounds(segs, block);
    const generation = this.generation;
    const first = this.nextSeq;
    // Every rank reserves the same numbers for the rounds' barriers, so later collectives keep theirs.
    this.nextSeq += 2 * rounds;
    const run = this.tail.then(() => this.runShared(buf, segs, block, rounds, generation, first));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async runShared(
    buf: Float32Array,
    segs: { start: number; end: number }[],
    block: number,
    rounds: number,
    generation: number,
    first: number,
  ): Promise<void> {
    this.sharedSpan = { generation, first, end: first + 2 * rounds };
    try {
      await sharedAllReduce(buf, segs, {
        rank: this.rank,
        world: this.world,
        blockElems: block,
        regions: this.regions,
        sum: (dst, inputs) => this.native!.sum(dst, inputs),
        live: () => !this.closed && generation === this.generation && this.regionsOn,
        nextRound: () => this.regionRound++,
        barrier: (i) => this.barrierAt(generation, first + i, buf.length),
      });
    } finally {
      this.sharedSpan = null;
    }
  }

  /**
   * A barrier under a reserved sequence number: the one-hop exchange of one element per rank. Its
   * messages carry the all-reduce's length, so ranks that called it with different lengths fail
   * at the first barrier instead of reading past each other's blocks.
   */
  private barrierAt(generation: number, seq: number, length: number): Promise<void> {
    const out = new Float32Array(this.world);
    out[this.rank] = this.rank;
    return this.start1('barrier', generation, seq, out, length, 'fp32', -1, barrierExchange, () => ({
      sends: [],
      recvs: [],
      from: -1,
      to: -1,
    }));
  }

  // ---------------------------------------------------------------- op engine

  private enqueue(
    kind: OpKindName,
    buf: Float32Array,
    total: number,
    wire: Wire,
    protectedUpTo: number,
    plan: () => Plan,
    exchange: Exchange | null = null,
  ): Promise<void> {
    if (this.closed) return Promise.reject(new CollectiveError(`rank ${this.rank}: ${kind} on a closed process group`, 'closed'));
    if (total > 0xffffffff) return Promise.reject(new RangeError(`${kind}: ${total} elements exceed the protocol's 2^32-1`));
    const generation = this.generation;
    const seq = this.nextSeq++;
    const run = this.tail.then(() =>
      this.start1(kind, generation, seq, buf, total, wire, protectedUpTo, this.world > 1 ? exchange : null, plan),
    );
    this.tail = run.catch(() => undefined);
    return run;
  }

  private start1(
    kind: OpKindName,
    generation: number,
    seq: number,
    buf: Float32Array,
    total: number,
    wire: Wire,
    protectedUpTo: number,
    exchange: Exchange | null,
    mkPlan: () => Plan,
  ): Promise<void> {
    const label = `${kind} #${seq} (generation ${generation})`;
    if (this.closed) return Promise.reject(new CollectiveError(`rank ${this.rank}: ${label}: process group closed`, 'closed'));
    if (generation !== this.generation)
      return Promise.reject(new CollectiveError(`rank ${this.rank}: ${label} aborted before it started`, 'aborted'));
    if (this.broken)
      return Promise.reject(
        new CollectiveError(
          `rank ${this.rank}: ${label} refused: an earlier collective failed (${this.broken.message}); call abort() on every rank first`,
          'broken',
        ),
      );
    const plan: Plan = exchange ? { sends: [], recvs: [], from: -1, to: -1 } : mkPlan();
    let ackNeeded = false;
    // Shared-memory sends copy the bytes before they return, so nothing needs protecting.
    const check = (step: number, start: number, end: number): void => {
      if (!this.shmLink.sending && wire === 'fp32' && step > protectedUpTo && (end - start) * 4 > COPY_MAX_BYTES) ackNeeded = true;
    };
    for (const s of plan.sends) check(s.step, s.start, s.end);
    let forwards = 0;
    for (const r of plan.recvs)
      if (r.forward) {
        forwards++;
        if (r.mode === 'add') check(r.step + 1, r.start, r.end);
      }
    return new Promise<void>((resolve, reject) => {
      const op: ActiveOp = {
        kind,
        generation,
        seq,
        label,
        buf,
        total,
        wire,
        plan,
        sendsTotal: exchange ? this.world - 1 : plan.sends.length + forwards,
        exchange,
        parts: [],
        got: 0,
        ackNeeded,
        protectedUpTo,
        next: 0,
        sendsIssued: 0,
        sendsDone: 0,
        acked: false,
        lastProgress: Date.now(),
        timer: null,
        pinger: null,
        settled: false,
        resolve,
        reject,
      };
      this.active = op;
      if (this.pendingFault) {
        const f = this.pendingFault;
        this.pendingFault = null;
        this.fail(op, new CollectiveError(`rank ${this.rank}: ${label}: ${f.message}`, 'protocol'), true);
        return;
      }
      this.armTimer(op);
      op.pinger = setInterval(() => this.ping(op), Math.max(50, this.timeoutMs / 4));
      for (const s of plan.sends) this.sendItem(op, s, null);
      if (exchange) {
        const { start, end } = exchange.contrib(this.rank);
        const payload = encode(buf.subarray(start, end), 'fp32');
        for (let r = 0; r < this.world; r++)
          if (r !== this.rank)
            this.transport.push(r, { frames: [this.header(MsgType.DATA, kind, generation, seq, 0, 0, total, wire), payload], op });
      }
      const key = `${generation}/${seq}`;
      const early = this.future.get(key);
      if (early) {
        this.future.delete(key);
        for (const m of early) {
          if (op.settled) break;
          this.deliver(op, m);
        }
      }
      this.maybeDone(op);
    });
  }

  private header(
    type: MsgType,
    op: OpKindName,
    generation: number,
    seq: number,
    step: number,
    chunk: number,
    total: number,
    wire: Wire,
    flags = 0,
  ): Buffer {
    return encodeHeader({ type, op, wire, sender: this.rank, flags, generation, seq, step, chunk, total });
  }

  private sendItem(op: ActiveOp, item: PlanItem, forwardPayload: Buffer | null): void {
    const last = ++op.sendsIssued === op.sendsTotal;
    let payload: Buffer;
    if (forwardPayload) {
      payload = forwardPayload;
    } else {
      const view = op.buf.subarray(item.start, item.end);
      // The owner's finished segment of a compressed all-reduce: keep the value the others receive.
      if (op.kind === 'allReduce' && item.step === this.world - 1) quantize(view, op.wire);
      if (op.wire !== 'fp32') payload = encode(view, op.wire);
      else if (this.shmLink.sending || item.step <= op.protectedUpTo || view.byteLength > COPY_MAX_BYTES)
        payload = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
      else payload = encode(view, 'fp32');
    }
    if (this.shmLink.sending) {
      // Every ring and chain sends its bulk data to the successor, the reader of this rank's segment.
      const h = this.header(MsgType.DATA, op.kind, op.generation, op.seq, item.step, item.chunk, op.total, op.wire, FLAG_SHM);
      return this.shmLink.send(op, h, payload);
    }
    const flags = last && op.ackNeeded ? FLAG_ACK_REQ : 0;
    const h = this.header(MsgType.DATA, op.kind, op.generation, op.seq, item.step, item.chunk, op.total, op.wire, flags);
    this.transport.push(op.plan.to, { frames: [h, payload], op });
  }

  private onRelease(h: Header, payload: Buffer): void {
    const bad = this.shmLink.release(h.sender, payload);
    if (bad) return this.fault(bad);
    if (this.active) this.active.lastProgress = Date.now();
    this.shmLink.pump();
  }

  private sent(o: Outgoing<ActiveOp>): void {
    const op = o.op;
    if (!op || op.settled) return;
    op.sendsDone++;
    op.lastProgress = Date.now();
    this.maybeDone(op);
  }

  private sendFailed(peer: number, o: Outgoing<ActiveOp>, e: unknown): void {
    if (this.closed || !o.op || o.op.settled) return;
    const why =
      (e as { code?: string }).code === 'EAGAIN' ? `did not take data for ${this.timeoutMs} ms` : `refused data: ${(e as Error).message}`;
    this.fail(
      o.op,
      new CollectiveError(
        `rank ${this.rank}: ${o.op.label}: rank ${peer} (${this.endpoints[peer]}) ${why}${this.liveness.downNote(Date.now())}`,
        'timeout',
        peer,
      ),
      true,
    );
  }

  private maybeDone(op: ActiveOp): void {
    if (op.settled || op.next < op.plan.recvs.length || op.sendsDone < op.sendsTotal || (op.ackNeeded && !op.acked)) return;
    if (op.exchange && op.got < this.world - 1) return;
    op.settled = true;
    if (op.timer) clearTimeout(op.timer);
    if (op.pinger) clearInterval(op.pinger);
    if (this.active === op) this.active = null;
    if (op.generation === this.generation) this.finishedSeq = Math.max(this.finishedSeq, op.seq + 1);
    op.resolve();
  }

  private fail(op: ActiveOp, err: CollectiveError, notify: boolean): void {
    if (op.settled) return;
    op.settled = true;
    if (op.timer) clearTimeout(op.timer);
    if (op.pinger) clearInterval(op.pinger);
    if (this.active === op) this.active = null;
    if (op.generation === this.generation) this.finishedSeq = Math.max(this.finishedSeq, op.seq + 1);
    this.transport.dropOp(op);
    this.shmLink.drop(op);
    if (err.code !== 'aborted') this.broken = err;
    if (notify && !this.closed) {
      const body = Buffer.from(JSON.stringify({ message: err.message, peer: err.peer }));
      for (let r = 0; r < this.world; r++)
        if (r !== this.rank)
          this.transport.push(r, {
            frames: [this.header(MsgType.FAIL, op.kind, op.generation, op.seq, 0, 0, op.total, 'fp32'), body],
            op: null,
          });
    }
    op.reject(err);
  }

  /** While waiting, tell every peer this rank is alive, so that their timeouts blame the right rank. */
  private ping(op: ActiveOp): void {
    if (op.settled || this.closed) return;
    for (let r = 0; r < this.world; r++)
      if (r !== this.rank)
        this.transport.push(r, {
          frames: [this.header(MsgType.PING, op.kind, op.generation, op.seq, 0, 0, op.total, 'fp32'), Buffer.alloc(0)],
          op: null,
        });
  }

  private armTimer(op: ActiveOp): void {
    const wait = Math.max(1, op.lastProgress + this.timeoutMs - Date.now());
    op.timer = setTimeout(() => {
      if (op.settled) return;
      if (Date.now() - op.lastProgress < this.timeoutMs) return this.armTimer(op);
      this.fail(op, this.timeoutError(op), true);
    }, wait);
  }

  private timeoutError(op: ActiveOp): CollectiveError {
    const { from, to } = op.plan;
    const t = this.timeoutMs;
    const missing = op.exchange ? this.endpoints.map((_, r) => r).find((r) => r !== this.rank && !op.parts[r]) : undefined;
    const [what, neighbour] =
      missing !== undefined
        ? [
            `timed out after ${t} ms waiting for rank ${missing} (${this.endpoints[missing]}): ${op.got} of ${this.world - 1} parts arrived`,
            missing,
          ]
        : op.next < op.plan.recvs.length
          ? [
              `timed out after ${t} ms waiting for rank ${from} (${this.endpoints[from]}): ${op.next} of ${op.plan.recvs.length} messages arrived`,
              from,
            ]
          : op.sendsDone < op.sendsTotal
            ? [`rank ${to} (${this.endpoints[to]}) took no data for ${t} ms`, to]
            : [`no acknowledgement from rank ${to} (${this.endpoints[to]}) within ${t} ms`, to];
    const silent = this.liveness.silentPeer(Date.now(), this.byeFrom);
    const blame =
      silent === null || silent.rank === neighbour
        ? silent === null
          ? ''
          : `; it has sent nothing at all for ${silent.ms} ms (dead, stopped, or not in this collective)`
        : `; rank ${silent.rank} (${this.endpoints[silent.rank]}) has sent nothing for ${silent.ms} ms (dead, stopped, or not in this collective)`;
    return new CollectiveError(
      `rank ${this.rank}: ${op.label}: ${what}${blame}${this.liveness.downNote(Date.now())}`,
      'timeout',
      silent?.rank ?? this.liveness.suspect(neighbour),
    );
  }

  private peerDown(r: number): void {
    if (this.closed) return;
    const at = Date.now();
    this.liveness.lost(r, at);
    this.byeWaiter?.();
    const op = this.active;
    if (!op) return;
    const needed =
      (op.exchange !== null && !op.parts[r]) ||
      (r === op.plan.from && op.next < op.plan.recvs.length) ||
      (r === op.plan.to && (op.sendsDone < op.sendsTotal || (op.ackNeeded && !op.acked)));
    if (!needed) return;
    // Messages the peer sent before it went may still be queued here; give them a moment.
    const progress = op.lastProgress;
    setTimeout(
      () => {
        if (op.settled || this.liveness.lostAt(r) !== at || op.lastProgress !== progress) return;
        this.fail(
          op,
          new CollectiveError(`rank ${this.rank}: ${op.label}: lost connection to rank ${r} (${this.endpoints[r]})`, 'peer-lost', r),
          true,
        );
      },
      Math.min(LOST_GRACE_MS, this.timeoutMs),
    ).unref();
  }

  // ---------------------------------------------------------------- receiving

  private receiveFailed(e: Error): void {
    const err = new CollectiveError(`rank ${this.rank}: receive failed on ${this.endpoints[this.rank]}: ${e.message}`, 'protocol');
    this.broken = err;
    if (this.active) this.fail(this.active, err, true);
  }

  private onFrames(frames: Buffer[]): void {
    try {
      this.onMessage(frames);
    } catch (e) {
      // A bug here must not kill the receive loop (and with it every later collective).
      const err = new CollectiveError(
        `rank ${this.rank}: internal error handling a message: ${(e as Error).stack ?? String(e)}`,
        'protocol',
      );
      if (this.active) this.fail(this.active, err, true);
      else this.pendingFault = err;
    }
  }

  private onMessage(frames: Buffer[]): void {
    let m: Incoming;
    try {
      m = decodeMessage(frames, this.world, this.rank);
    } catch (e) {
      if (e instanceof ForeignMessage) {
        this.stats.foreign++;
        return;
      }
      return this.fault(`malformed message: ${(e as Error).message}`);
    }
    const h = m.header;
    this.liveness.heard(h.sender, Date.now());
    if (h.type === MsgType.PING) return;
    if (h.type === MsgType.BYE) {
      this.byeFrom.add(h.sender);
      this.transport.push(h.sender, { frames: [this.header(MsgType.ACK, 'hello', 0, 0, 0, 0, 0, 'fp32'), Buffer.alloc(0)], op: null });
      this.byeWaiter?.();
      return;
    }
    if (h.type === MsgType.ACK && h.op === 'hello') {
      this.byeAcked.add(h.sender);
      this.byeWaiter?.();
      return;
    }
    if (h.type === MsgType.HELLO) return this.onHello(h, m.payload);
    if (h.type === MsgType.LINK) return this.onLink(h, m.payload);
    if (h.type === MsgType.RELEASE) return this.onRelease(h, m.payload);
    const shm = h.type === MsgType.DATA && (h.flags & FLAG_SHM) !== 0;
    const op = this.active;
    if (op && h.generation === op.generation && h.seq === op.seq) return this.deliver(op, m);
    // A peer's failure anywhere in the shared-buffer all-reduce fails this rank's part of it too,
    // even when this rank had already passed the barrier it names.
    const span = this.sharedSpan;
    if (h.type === MsgType.FAIL && span && h.generation === span.generation && h.seq >= span.first && h.seq < span.end) {
      if (op && op.seq >= span.first && op.seq < span.end) return this.deliver(op, m);
      // Between two of its barriers (the one before settled, the next not started yet: the receive
      // loop's continuation can run in between), the FAIL waits for the next one, which it fails.
      // Dropped as stale instead, it left this rank waiting in that barrier for the whole timeout.
      if (!op && h.generation === this.generation && this.finishedSeq < span.end) {
        const key = `${h.generation}/${this.finishedSeq}`;
        const list = this.future.get(key);
        if (list) list.unshift(m);
        else this.future.set(key, [m]);
        return;
      }
    }
    // Not `nextSeq`: a collective may be queued (numbered) but not started, and its messages count.
    if (h.generation < this.generation || (h.generation === this.generation && h.seq < this.finishedSeq)) {
      this.stats.stale++;
      if (shm) {
        const bad = this.shmLink.take(h, m.payload, null);
        if (bad) this.fault(bad);
      }
      return;
    }
    // A peer already in a later collective or generation: keep it for when this rank gets there.
    if (shm) {
      const own = this.shmLink.materialize(m);
      if (typeof own === 'string') return this.fault(own);
      m = own;
    }
    const key = `${h.generation}/${h.seq}`;
    const list = this.future.get(key);
    if (list) list.push(m);
    else if (this.future.size >= MAX_FUTURE_OPS)
      return this.fault(`rank ${h.sender} is more than ${MAX_FUTURE_OPS} collectives ahead (generation ${h.generation}, #${h.seq})`);
    else this.future.set(key, [m]);
  }

  private fault(message: string): void {
    const err = new CollectiveError(`rank ${this.rank}: ${message}`, 'protocol');
    if (this.active) this.fail(this.active, new CollectiveError(`rank ${this.rank}: ${this.active.label}: ${message}`, 'protocol'), true);
    else this.pendingFault = err;
  }

  private onHello(h: Header, payload: Buffer): void {
    let body: unknown = null;
    try {
      body = JSON.parse(payload.toString('utf8'));
    } catch {
      body = null;
    }
    if (!this.helloWaiter) return; // a late duplicate; the handshake is over
    if (this.hellos.has(h.sender)) return;
    this.hellos.set(h.sender, body);
    // Only the predecessor sends this rank bulk data; its segment is worth opening if it offers one.
    const offer = (body as { shm?: unknown } | null)?.shm;
    let link: { shm: boolean; reason?: string } = { shm: false, reason: 'not the ring predecessor' };
    if (h.sender === this.predecessor) {
      if (!this.useShm) link = { shm: false, reason: 'shared memory turned off on the reader' };
      else if (!offer) link = { shm: false, reason: 'no segment offered' };
      else {
        const why = this.shmLink.open(offer, this.native);
        if (why !== null) {
          link = { shm: false, reason: why };
          this.shmNotes.push(`rank ${h.sender}'s segment not used: ${why}`);
        } else link = { shm: true };
      }
    }
    const regionOffer = (body as { region?: unknown } | null)?.region;
    if (this.region && this.native && regionOffer) {
      const mapped = ShmRegion.open(regionOffer, this.world, this.native);
      if (typeof mapped === 'string') this.shmNotes.push(`rank ${h.sender}'s shared buffer not used: ${mapped}`);
      else this.regions[h.sender] = mapped;
    }
    this.transport.push(h.sender, {
      frames: [this.header(MsgType.LINK, 'hello', 0, 0, 0, 0, 0, 'fp32'), Buffer.from(JSON.stringify(link))],
      op: null,
    });
    this.helloWaiter();
  }

  /** A LINK is an answer to this rank's HELLO ({shm, reason}) or a peer's status ({sending, regions}). */
  private onLink(h: Header, payload: Buffer): void {
    if (!this.helloWaiter) return;
    let body: unknown = null;
    try {
      body = JSON.parse(payload.toString('utf8'));
    } catch {
      body = null;
    }
    const status =
      body !== null && typeof body === 'object' && 'sending' in body ? (body as { sending: unknown; regions?: unknown }) : undefined;
    if (status !== undefined) this.peerStatus.set(h.sender, { sending: status.sending === true, regions: status.regions === true });
    else if (!this.links.has(h.sender)) this.links.set(h.sender, body);
    this.helloWaiter();
  }

  private deliver(op: ActiveOp, m: Incoming): void {
    const h = m.header;
    if (h.type === MsgType.FAIL) {
      let info: { message?: unknown; peer?: unknown } = {};
      try {
        info = JSON.parse(m.payload.toString('utf8')) as typeof info;
      } catch {
        info = { message: m.payload.toString('utf8').slice(0, 500) };
      }
      const peer = typeof info.peer === 'number' ? info.peer : h.sender;
      return this.fail(
        op,
        new CollectiveError(`rank ${this.rank}: ${op.label} failed on rank ${h.sender}: ${String(info.message)}`, 'peer-failed', peer),
        false,
      );
    }
    if (h.type === MsgType.ACK) {
      if (h.sender !== op.plan.to || !op.ackNeeded)
        return this.fail(
          op,
          new CollectiveError(`rank ${this.rank}: ${op.label}: unexpected acknowledgement from rank ${h.sender}`, 'protocol', h.sender),
          true,
        );
      op.acked = true;
      op.lastProgress = Date.now();
      return this.maybeDone(op);
    }
    const shm = h.type === MsgType.DATA && (h.flags & FLAG_SHM) !== 0;
    if (shm && op.exchange) {
      const bad = this.shmLink.take(h, m.payload, null) ?? `rank ${h.sender} sent shared-memory data to a one-hop exchange`;
      return this.fail(op, new CollectiveError(`rank ${this.rank}: ${op.label}: ${bad}`, 'protocol', h.sender), true);
    }
    if (op.exchange) return this.deliverPart(op, op.exchange, h, m.payload);
    const bad = this.checkData(op, h, m.payload);
    if (bad) {
      if (shm) this.shmLink.take(h, m.payload, null);
      return this.fail(op, new CollectiveError(`rank ${this.rank}: ${op.label}: ${bad}`, 'protocol', h.sender), true);
    }
    const r = op.plan.recvs[op.next++]!;
    const dst = op.buf.subarray(r.start, r.end);
    let forward: Buffer | null = r.mode === 'copy' ? m.payload : null;
    if (shm) {
      // fp32 goes straight from the segment into the buffer, or into the add kernel's memory.
      const bytes = (r.end - r.start) * wireBytes[op.wire];
      const into =
        op.wire !== 'fp32'
          ? this.shmLink.scratch.subarray(0, bytes)
          : r.mode === 'copy'
            ? new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength)
            : (peer: ShmPeer) => {
                // Mapped: one pass reading the slot in place (the same fp32 additions as the kernel's).
                const src = peer.floats(dst.length);
                if (src && this.native) this.native.sum(dst, [dst, src]);
                else addF32From(dst, (piece, at) => peer.read(piece, at));
              };
      const bad2 = this.shmLink.take(h, m.payload, into);
      if (bad2) return this.fail(op, new CollectiveError(`rank ${this.rank}: ${op.label}: ${bad2}`, 'protocol', h.sender), true);
      if (op.wire !== 'fp32') (r.mode === 'add' ? decodeAdd : decodeCopy)(dst, into as Uint8Array, op.wire);
      // A copy goes on from the buffer: into this rank's own segment, or as a copy onto the socket
      // (a view would let ZeroMQ read memory the caller owns again once the collective is over).
      forward = r.mode === 'copy' && !this.shmLink.sending ? encode(dst, op.wire) : null;
    } else if (r.mode === 'add') decodeAdd(dst, m.payload, op.wire);
    else decodeCopy(dst, m.payload, op.wire);
    op.lastProgress = Date.now();
    if (r.forward) this.sendItem(op, { step: r.step + 1, chunk: r.chunk, start: r.start, end: r.end }, forward);
    if (h.flags & FLAG_ACK_REQ)
      this.transport.push(h.sender, {
        frames: [this.header(MsgType.ACK, op.kind, op.generation, op.seq, h.step, h.chunk, op.total, 'fp32'), Buffer.alloc(0)],
        op: null,
      });
    this.maybeDone(op);
  }

  private deliverPart(op: ActiveOp, ex: Exchange, h: Header, payload: Buffer): void {
    const { start, end } = ex.contrib(h.sender);
    const bad = partProblem(h, op, (end - start) * 4, payload.length, op.parts[h.sender] !== undefined);
    if (bad) return this.fail(op, new CollectiveError(`rank ${this.rank}: ${op.label}: ${bad}`, 'protocol', h.sender), true);
    op.parts[h.sender] = partValues(payload, end - start);
    op.got++;
    op.lastProgress = Date.now();
    if (op.got === this.world - 1) {
      const own = this.rank;
      const { start: s0, end: e0 } = ex.contrib(own);
      op.parts[own] = op.buf.slice(s0, e0);
      ex.finish(op.parts as Float32Array[]);
    }
    this.maybeDone(op);
  }

  /** Why a DATA message cannot be part of this collective, or null when it fits. */
  private checkData(op: ActiveOp, h: Header, payload: Buffer): string | null {
    const exp: PlanRecv | undefined = op.plan.recvs[op.next];
    if (h.op !== op.kind)
      return `rank ${h.sender} sent data of ${h.op}, this rank is running ${op.kind} (collectives called in different orders?)`;
    if (h.total !== op.total) return `rank ${h.sender} runs it on ${h.total} elements, this rank on ${op.total}`;
    if (h.wire !== op.wire) return `rank ${h.sender} sends ${h.wire}, this rank expects ${op.wire}`;
    if (!exp)
      return `unexpected extra data from rank ${h.sender} (step ${h.step}, chunk ${h.chunk}): all ${op.plan.recvs.length} messages already arrived`;
    if (h.sender !== op.plan.from) return `data from rank ${h.sender}, expected it from rank ${op.plan.from}`;
    if (h.step !== exp.step || h.chunk !== exp.chunk)
      return `rank ${h.sender} sent step ${h.step} chunk ${h.chunk}, expected step ${exp.step} chunk ${exp.chunk}`;
    const want = (exp.end - exp.start) * wireBytes[op.wire];
    const got = h.flags & FLAG_SHM ? (decodeDescriptor(payload)?.bytes ?? -1) : payload.length;
    if (got !== want) return `rank ${h.sender} sent ${got} bytes for step ${h.step} chunk ${h.chunk}, expected ${want}`;
    return null;
  }
}
