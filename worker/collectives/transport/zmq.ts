import * as zmq from 'zeromq';
import { UserError } from '../../../shared/util/errors.js';

/**
 * The socket transport: every rank binds one PULL socket on its endpoint and connects one PUSH
 * socket to every other rank. A PUSH/PULL pipe is FIFO, which the ring's chunk order relies on.
 * zeromq.js sends Buffers zero-copy and allows one send in flight per socket, so each peer's
 * socket has a queue (`Outbox`). What the messages mean is the process group's business.
 */

/**
 * Kernel send and receive buffer of every socket. Linux's autotuning grows loopback TCP buffers to
 * several MiB, and the bytes in flight then fall out of the cache between the sender's copy in and
 * the receiver's copy out; at 256 KiB both copies stay in L2 (docs/performance.md, "Collectives").
 */
export const DEFAULT_SOCKET_BUFFER_BYTES = 256 << 10;

/** A message: header and payload frames, and the collective it belongs to (null: none). */
export interface Outgoing<Op> {
  readonly frames: [Buffer, Buffer];
  readonly op: Op | null;
}

export interface ZmqOptions {
  rank: number;
  endpoints: readonly string[];
  /** A send that ZeroMQ cannot queue for this long fails (sendFailed, code EAGAIN). */
  timeoutMs: number;
  /** Largest message the receive socket accepts. */
  maxMessageBytes: number;
  /** libzmq I/O threads (default: the shared context, one thread). */
  ioThreads?: number;
  /** SO_SNDBUF/SO_RCVBUF of every socket; 0: the OS's autotuning. */
  socketBufferBytes: number;
}

/** What the transport reports; called from its sockets' events and its receive loop. */
export interface ZmqEvents<Op> {
  /** A message arrived (in arrival order; a throw here ends the receive loop, so callers catch). */
  message(frames: Buffer[]): void;
  /** The receive socket failed while open: nothing more will arrive. */
  receiveFailed(e: Error): void;
  /** A message was handed to ZeroMQ. */
  sent(o: Outgoing<Op>): void;
  sendFailed(peer: number, o: Outgoing<Op>, e: unknown): void;
  /** The connection to a peer dropped, or (again) completed its ZMTP handshake. */
  disconnected(peer: number): void;
  connected(peer: number): void;
}

/** One socket's send queue: zeromq.js allows one send in flight per socket. */
class Outbox<Op> {
  private queue: Outgoing<Op>[] = [];
  private busy = false;

  constructor(
    readonly socket: zmq.Push,
    private readonly onSent: (o: Outgoing<Op>) => void,
    private readonly onError: (o: Outgoing<Op>, e: unknown) => void,
  ) {}

  push(o: Outgoing<Op>): void {
    this.queue.push(o);
    if (!this.busy) void this.pump();
  }

  private async pump(): Promise<void> {
    this.busy = true;
    let o: Outgoing<Op> | undefined;
    while ((o = this.queue.shift()) !== undefined) {
      try {
        await this.socket.send(o.frames);
        this.onSent(o);
      } catch (e) {
        this.onError(o, e);
      }
    }
    this.busy = false;
  }

  dropOp(op: Op): void {
    this.queue = this.queue.filter((o) => o.op !== op);
  }
}

/** This rank's sockets: the PULL it binds and a PUSH to every peer, each with its send queue. */
export class ZmqTransport<Op> {
  private readonly context: zmq.Context | undefined;
  private readonly pull: zmq.Pull;
  private readonly outboxes: (Outbox<Op> | null)[];
  private closed = false;

  /** Creates the sockets and connects to every peer (ZeroMQ connects in the background). */
  constructor(
    private readonly o: ZmqOptions,
    private readonly events: ZmqEvents<Op>,
  ) {
    this.context = o.ioThreads ? new zmq.Context({ ioThreads: o.ioThreads }) : undefined;
    const ctx = this.context ? { context: this.context } : {};
    const sockBuf = o.socketBufferBytes;
    this.pull = new zmq.Pull({
      ...ctx,
      maxMessageSize: o.maxMessageBytes,
      linger: 0,
      ...(sockBuf > 0 ? { receiveBufferSize: sockBuf } : {}),
    });
    this.outboxes = o.endpoints.map((ep, r) => {
      if (r === o.rank) return null;
      const s = new zmq.Push({ ...ctx, sendTimeout: o.timeoutMs, linger: 1000, ...(sockBuf > 0 ? { sendBufferSize: sockBuf } : {}) });
      s.events.on('disconnect', () => events.disconnected(r));
      s.events.on('handshake', () => events.connected(r));
      s.connect(ep);
      return new Outbox<Op>(
        s,
        (m) => events.sent(m),
        (m, e) => events.sendFailed(r, m, e),
      );
    });
  }

  /** Binds this rank's endpoint; messages queue in ZeroMQ until `receive` starts taking them. */
  async bind(): Promise<void> {
    const ep = this.o.endpoints[this.o.rank]!;
    try {
      await this.pull.bind(ep);
    } catch (e) {
      throw new UserError(`rank ${this.o.rank}: cannot bind ${ep}: ${(e as Error).message} (is another process using it?)`);
    }
  }

  /** Starts the receive loop; messages reach `events.message` only after this call has returned. */
  receive(): void {
    void this.receiveLoop();
  }

  /** Queues a message to `peer`, behind everything queued to it before. */
  push(peer: number, o: Outgoing<Op>): void {
    this.outboxes[peer]!.push(o);
  }

  /** Drops the queued (not yet handed over) messages of a collective. */
  dropOp(op: Op): void {
    for (const o of this.outboxes) o?.dropOp(op);
  }

  close(): void {
    this.closed = true;
    for (const o of this.outboxes) o?.socket.close();
    this.pull.close();
  }

  private async receiveLoop(): Promise<void> {
    for (;;) {
      let frames: Buffer[];
      try {
        frames = await this.pull.receive();
      } catch (e) {
        if (!this.closed) this.events.receiveFailed(e as Error);
        return;
      }
      this.events.message(frames);
    }
  }
}
