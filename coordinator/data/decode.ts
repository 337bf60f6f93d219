import { availableParallelism } from 'node:os';
import sharp from 'sharp';

/**
 * Image decoding for `data prepare` (and its benchmark, which must use exactly these settings).
 *
 * Aspect policy: scale so the shorter side is `size`, then crop the centre square ("cover").
 * Chest films are close to square (NIH 1024x1024; CheXpert portrait, about 0.8-1.0), so the crop
 * loses a thin band at the edges (outside the lungs) and nothing is stretched or letterboxed.
 * PNG (8 or 16 bit, grey, RGB, with or without alpha) and JPEG are read by libvips; 16-bit data
 * is scaled to 8 bit (not clipped), colour is converted to luminance.
 */
export async function decodeGray(file: string, size: number): Promise<Uint8Array> {
  const { data, info } = await sharp(file, { failOn: 'warning', sequentialRead: true })
    .resize(size, size, { fit: 'cover', position: 'centre', kernel: 'lanczos3' })
    .removeAlpha()
    .toColourspace('b-w')
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.width !== size || info.height !== size) throw new Error(`decoded to ${info.width}x${info.height}, expected ${size}x${size}`);
  if (info.channels === 1) return new Uint8Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint8Array(size * size);
  for (let i = 0, j = 0; i < out.length; i++, j += info.channels) out[i] = data[j]!;
  return out;
}

/**
 * Parallelism: one libvips thread per image and several images in flight on libuv's thread
 * pool, which beats several threads on one small image. Called once per process.
 */
export function configureDecoder(): { inFlight: number } {
  sharp.concurrency(1);
  sharp.cache(false);
  const cores = availableParallelism();
  return { inFlight: Math.max(4, 2 * cores) };
}
