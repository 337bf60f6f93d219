import type { ShmNative } from '../../../native/addon.js';
import { FLAG_SHM, type Header, type Incoming } from '../protocol.js';
import { ShmPeer, ShmSegment, type ShmOffer, decodeDescriptor, decodeRelease, encodeDescriptor, encodeRelease, shmSlots } from './shm.js';

/** A send to the ring successor waiting for a free slot. */
interface ShmSend<Op> {
  readonly op: Op;
  readonly header: Buffer;
  readonly payload: Uint8Array;
}

/** How the link's small messages go out: over the socket transport, built by the process group. */
export interface ShmPost<Op> {
  /** A DATA message whose bytes are in the segment: its header (FLAG_SHM) and descriptor, to the successor. */
  data(op: Op, header: Buffer, descriptor: Buffer): void;
  /** A RELEASE to the predecessor: the count of its slots consumed. */
  release(to: number, body: Buffer): void;
}

/**
 * A rank's two ring links through shared memory (shm.ts has the segments): its own segment,
 * written for its successor (rank + 1, the only peer a ring or chain sends bulk data to), and
 * its predecessor's, read. Each chunk is a slot plus a descriptor on the socket; the reader's
 * releases free the slots. Ordering, generations and checks stay with the socket's messages.
 */
export class ShmLink<Op extends { readonly settled: boolean }> {
  /** This rank's segment while its successor reads it (until then: offered, maybe not taken). */
  private segment: ShmSegment | null = null;
  /** The predecessor's segment, when this rank reads it. */
  private reader: ShmPeer | null = null;
  private sendOn = false;
  private queue: ShmSend<Op>[] = [];
  /** A slot's worth of bytes to decode a compressed wire from. */
  private scratchBytes: Buffer | null = null;

  constructor(
    private readonly rank: number,
    private readonly world: number,
    private readonly post: ShmPost<Op>,
  ) {}

  private get successor(): number {
    return (this.rank + 1) % this.world;
  }

  private get predecessor(): number {
    return (this.rank - 1 + this.world) % this.world;
  }

  /** Creates this rank's segment for slots of `slotBytes`; throws why it cannot. */
  create(dir: string, slotBytes: number, native: ShmNative | null): void {
    this.segment = ShmSegment.create(dir, shmSlots(slotBytes), slotBytes, native);
  }

  /** What the handshake's HELLO tells the peers about this rank's segment. */
  offer(): ShmOffer | null {
    return this.segment?.offer() ?? null;
  }

  /** Opens the predecessor's segment from its offer; why not, or null when it is read from now on. */
  open(offer: unknown, native: ShmNative | null): string | null {
    const peer = ShmPeer.open(offer, native);
    if (typeof peer === 'string') return peer;
    this.reader = peer;
    this.scratchBytes = Buffer.allocUnsafe(peer.slotBytes);
    return null;
  }

  /**
   * After the handshake: the successor has opened this rank's segment (or said why not), so its
   * name can go; a segment nobody reads is closed at once. Returns why it is not used, if it is not.
   */
  settle(answer: { shm?: unknown; reason?: unknown } | undefined): string | null {
    this.sendOn = this.segment !== null && answer?.shm === true;
    let note: string | null = null;
    if (this.segment && !this.sendOn) {
      note = `rank ${this.successor} does not read this rank's segment: ${String(answer?.reason ?? 'no reason given')}`;
      this.segment.close();
      this.segment = null;
    }
    this.segment?.unlink();
    return note;
  }

  /** Whether bulk data to the successor goes through the segment. */
  get sending(): boolean {
    return this.sendOn;
  }

  /** Whether bulk data from the predecessor comes through its segment. */
  get receiving(): boolean {
    return this.reader !== null;
  }

  get scratch(): Buffer {
    return this.scratchBytes!;
  }

  /** Queues a send; `payload` may be a view of the collective's buffer (see `pump`). */
  send(op: Op, header: Buffer, payload: Uint8Array): void {
    this.queue.push({ op, header, payload });
    this.pump();
  }

  /**
   * Writes queued sends into free slots, in order. The payload of a waiting send is a view of the
   * collective's buffer: nothing writes that range again before this send has gone (what comes
   * back into it has to pass through the successor first), and a send of a failed collective is
   * dropped, never written.
   */
  pump(): void {
    const seg = this.segment;
    if (!seg) return;
    while (this.queue.length > 0 && seg.canWrite()) {
      const s = this.queue.shift()!;
      if (s.op.settled) continue;
      const counter = seg.write(s.payload);
      this.post.data(s.op, s.header, encodeDescriptor(counter, s.payload.byteLength));
    }
  }

  /** Drops the waiting sends of a collective. */
  drop(op: Op): void {
    this.queue = this.queue.filter((s) => s.op !== op);
  }

  /** Records the successor's release (call `pump` after); why it cannot be one, or null. */
  release(sender: number, payload: Buffer): string | null {
    const consumed = decodeRelease(payload);
    if (sender !== this.successor || !this.segment || consumed === null || !this.segment.release(consumed))
      return `rank ${sender} sent a shared-memory release (${consumed ?? 'unreadable'}) that does not fit this rank's segment`;
    return null;
  }

  /**
   * Takes the next slot of the predecessor's segment: copied into `dst`, or skipped (`dst` null)
   * when its collective is over, and released either way, so that the slot order never depends on
   * which collective a message belongs to. Returns why the descriptor is wrong, or null.
   */
  take(h: Header, payload: Buffer, dst: Uint8Array | ((peer: ShmPeer) => void) | null): string | null {
    const d = decodeDescriptor(payload);
    const peer = this.reader;
    if (!peer || h.sender !== this.predecessor) return `rank ${h.sender} sent shared-memory data, but this rank does not read its segment`;
    if (!d) return `rank ${h.sender} sent an unreadable shared-memory descriptor`;
    const bad =
      peer.check(d.counter, d.bytes) ??
      (dst instanceof Uint8Array && dst.byteLength !== d.bytes
        ? `rank ${h.sender} sent ${d.bytes} bytes for step ${h.step} chunk ${h.chunk}, expected ${dst.byteLength}`
        : null);
    if (bad) return `${bad} (from rank ${h.sender})`;
    if (dst instanceof Uint8Array) peer.read(dst);
    else if (dst) dst(peer);
    peer.advance();
    // Released in batches of half the slots: the writer always keeps half a segment of lead, and
    // every message saved is a wake-up of both ranks' threads saved.
    if (peer.consumed % Math.max(1, peer.slots >> 1) === 0) this.post.release(h.sender, encodeRelease(peer.consumed));
    return null;
  }

  /** A shared-memory message for a collective that has not started here: its bytes move into the message. */
  materialize(m: Incoming): Incoming | string {
    const d = decodeDescriptor(m.payload);
    const bytes = Buffer.allocUnsafe(d && d.bytes <= (this.reader?.slotBytes ?? 0) ? d.bytes : 0);
    const bad = this.take(m.header, m.payload, bytes);
    return bad ?? { header: { ...m.header, flags: m.header.flags & ~FLAG_SHM }, payload: bytes };
  }

  close(): void {
    this.segment?.close();
    this.reader?.close();
    this.queue = [];
  }
}
