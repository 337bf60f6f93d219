import { createHash } from 'node:crypto';
import { endianness } from 'node:os';

/**
 * The replica fingerprint: lowercase hex sha256 of the flat float32 parameter vector's
 * little-endian bytes. Ranks compare it through the control plane at rendezvous and every K steps;
 * equal hashes mean bit-identical replicas.
 */
export function paramsSha256(params: Float32Array): string {
  if (endianness() !== 'LE') throw new Error('paramsSha256: big-endian hosts are not supported (the wire formats are little-endian)');
  return createHash('sha256')
    .update(new Uint8Array(params.buffer, params.byteOffset, params.byteLength))
    .digest('hex');
}
