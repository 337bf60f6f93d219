import { type Wire, wireCode, wireOfCode, wireBytes } from './codec.js';
import { DESCRIPTOR_BYTES } from './transport/shm.js';

/**
 * Message format between ranks. Every message is two ZeroMQ frames: a fixed 32-byte little-endian
 * header and a payload (tensor bytes for DATA, or with FLAG_SHM a 12-byte shared-memory
 * descriptor (shm.ts); UTF-8 JSON for HELLO, LINK and FAIL; 8 bytes for RELEASE; empty for ACK).
 *
 *   off size field
 *     0  4   magic 'CXRC' (0x43525843 read as u32 LE)
 *     4  1   protocol version (2)
 *     5  1   type: 1 DATA, 2 ACK, 3 HELLO, 4 FAIL, 5 PING (sign of life while waiting),
 *                6 BYE (closing; answered with ACK of op kind hello), 7 RELEASE (shared-memory
 *                slots consumed, u48 count), 8 LINK (answer to a HELLO: whether the shared-memory
 *                segment it offered could be opened here)
 *     6  1   op kind (OpKind)
 *     7  1   wire format of the payload: 0 fp32, 1 fp16, 2 bf16
 *     8  2   sender rank
 *    10  2   flags: bit 0 ACK_REQ (the receiver answers with ACK once it has this message),
 *                bit 1 SHM (DATA whose bytes are in the sender's shared-memory segment)
 *    12  4   generation
 *    16  4   op sequence number within the generation (every rank numbers its collectives 0, 1, ...)
 *    20  4   ring step
 *    24  4   chunk index within the step's segment
 *    28  4   total elements of the collective's buffer (catches ranks calling with other lengths)
 */
export const MAGIC = 0x43525843;
export const VERSION = 2;
export const HEADER_BYTES = 32;

export const MsgType = { DATA: 1, ACK: 2, HELLO: 3, FAIL: 4, PING: 5, BYE: 6, RELEASE: 7, LINK: 8 } as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];

export const OpKind = { allReduce: 1, reduceScatter: 2, allGather: 3, allGatherV: 4, broadcast: 5, barrier: 6, hello: 7 } as const;
export type OpKindName = keyof typeof OpKind;
const opKindNames = Object.fromEntries(Object.entries(OpKind).map(([k, v]) => [v, k])) as Record<number, OpKindName>;

export const FLAG_ACK_REQ = 1;
export const FLAG_SHM = 2;

export interface Header {
  type: MsgType;
  op: OpKindName;
  wire: Wire;
  sender: number;
  flags: number;
  generation: number;
  seq: number;
  step: number;
  chunk: number;
  total: number;
}

export function encodeHeader(h: Header): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt8(VERSION, 4);
  b.writeUInt8(h.type, 5);
  b.writeUInt8(OpKind[h.op], 6);
  b.writeUInt8(wireCode[h.wire], 7);
  b.writeUInt16LE(h.sender, 8);
  b.writeUInt16LE(h.flags, 10);
  b.writeUInt32LE(h.generation >>> 0, 12);
  b.writeUInt32LE(h.seq >>> 0, 16);
  b.writeUInt32LE(h.step, 20);
  b.writeUInt32LE(h.chunk, 24);
  b.writeUInt32LE(h.total, 28);
  return b;
}

/** A received message: its header, and the payload frame as it arrived. */
export interface Incoming {
  readonly header: Header;
  readonly payload: Buffer;
}

/** Not a message of this protocol at all (wrong frame count, size or magic): dropped, counted. */
export class ForeignMessage extends Error {}

/** A message of this protocol whose fields are invalid: an error for the collective it reaches. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * Parses and checks what can be checked without knowing the collective: structure, type, sender
 * rank, world-independent payload sizes. Throws ForeignMessage or ProtocolError.
 */
export function decodeMessage(frames: readonly Buffer[], world: number, self: number): Incoming {
  if (frames.length !== 2) throw new ForeignMessage(`${frames.length} frames, expected 2`);
  const [hb, payload] = frames as [Buffer, Buffer];
  if (hb.length !== HEADER_BYTES) throw new ForeignMessage(`header of ${hb.length} bytes, expected ${HEADER_BYTES}`);
  if (hb.readUInt32LE(0) !== MAGIC) throw new ForeignMessage('bad magic');
  const version = hb.readUInt8(4);
  if (version !== VERSION) throw new ProtocolError(`protocol version ${version}, this rank speaks ${VERSION}`);
  const type = hb.readUInt8(5);
  if (type < 1 || type > 8) throw new ProtocolError(`unknown message type ${type}`);
  const opCode = hb.readUInt8(6);
  const op = opKindNames[opCode];
  if (!op) throw new ProtocolError(`unknown op kind ${opCode}`);
  const wc = hb.readUInt8(7);
  const wire = wireOfCode[wc];
  if (!wire) throw new ProtocolError(`unknown wire format ${wc}`);
  const sender = hb.readUInt16LE(8);
  if (sender >= world) throw new ProtocolError(`sender rank ${sender} outside 0..${world - 1}`);
  if (sender === self) throw new ProtocolError(`message claims to come from this rank (${self})`);
  const header: Header = {
    type: type as MsgType,
    op,
    wire,
    sender,
    flags: hb.readUInt16LE(10),
    generation: hb.readUInt32LE(12),
    seq: hb.readUInt32LE(16),
    step: hb.readUInt32LE(20),
    chunk: hb.readUInt32LE(24),
    total: hb.readUInt32LE(28),
  };
  if (type === MsgType.DATA && header.flags & FLAG_SHM) {
    if (payload.length !== DESCRIPTOR_BYTES)
      throw new ProtocolError(
        `${op} shared-memory data from rank ${sender}: descriptor of ${payload.length} bytes, expected ${DESCRIPTOR_BYTES}`,
      );
  } else if (type === MsgType.DATA && payload.length % wireBytes[wire] !== 0)
    throw new ProtocolError(`${op} data from rank ${sender}: ${payload.length} bytes is not a whole number of ${wire} values`);
  if ((type === MsgType.ACK || type === MsgType.PING || type === MsgType.BYE) && payload.length !== 0)
    throw new ProtocolError(`control message ${type} from rank ${sender} carries ${payload.length} bytes`);
  if (type === MsgType.RELEASE && payload.length !== 8)
    throw new ProtocolError(`release from rank ${sender} carries ${payload.length} bytes, expected 8`);
  return { header, payload };
}
