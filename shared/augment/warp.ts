import { augmentDraw, type AugmentDraw, type AugmentPolicy } from './policy.js';

/**
 * One square uint8 grayscale image through a draw: bilinear sampling of the source at the affine
 * map's points (outside the image the nearest edge pixel, so no black wedges that could pass for
 * air), then contrast about the source's mean and brightness, rounded and clamped to 0..255.
 * Float64 throughout and no platform-dependent operation, so the bytes are the same everywhere.
 */
export function warpImage(src: Uint8Array, size: number, d: AugmentDraw, out = new Uint8Array(size * size)): Uint8Array {
  if (src.length !== size * size) throw new RangeError(`warpImage: ${src.length} pixels for a ${size}x${size} image`);
  let sum = 0;
  for (let i = 0; i < src.length; i++) sum += src[i]!;
  const mean = sum / src.length;
  // v -> ((v - mean) * contrast + mean) * brightness, as one affine map.
  const gain = d.contrast * d.brightness;
  const offset = mean * (1 - d.contrast) * d.brightness;
  const last = size - 1;
  for (let y = 0; y < size; y++) {
    const X0 = d.bx * y + d.cx;
    const Y0 = d.by * y + d.cy;
    const row = y * size;
    // The row's points lie on a line: when both ends have all four neighbours inside, every point
    // does, and the loop needs no clamping (the same arithmetic, so the same bytes).
    const Xe = X0 + d.ax * last;
    const Ye = Y0 + d.ay * last;
    const inside = Math.min(X0, Xe) >= 0 && Math.max(X0, Xe) < last && Math.min(Y0, Ye) >= 0 && Math.max(Y0, Ye) < last;
    let X = X0;
    let Y = Y0;
    for (let x = 0; x < size; x++, X += d.ax, Y += d.ay) {
      let x0: number;
      let y0: number;
      let fx: number;
      let fy: number;
      let x1: number;
      let r1: number;
      if (inside) {
        // Non-negative, so truncation is the floor.
        x0 = X | 0;
        y0 = Y | 0;
        fx = X - x0;
        fy = Y - y0;
        x1 = x0 + 1;
        r1 = (y0 + 1) * size;
      } else {
        const xc = Math.min(Math.max(X, 0), last);
        const yc = Math.min(Math.max(Y, 0), last);
        x0 = xc | 0;
        y0 = yc | 0;
        fx = xc - x0;
        fy = yc - y0;
        x1 = x0 < last ? x0 + 1 : last;
        r1 = (y0 < last ? y0 + 1 : last) * size;
      }
      const r0 = y0 * size;
      const a = src[r0 + x0]!;
      const c = src[r1 + x0]!;
      const top = a + (src[r0 + x1]! - a) * fx;
      const bottom = c + (src[r1 + x1]! - c) * fx;
      // Math.round(v) is floor(v + 0.5) by definition; below 0 it clamps anyway.
      const t = (top + (bottom - top) * fy) * gain + offset + 0.5;
      out[row + x] = t < 0 ? 0 : t >= 256 ? 255 : t | 0;
    }
  }
  return out;
}

/**
 * A slice of training rows augmented: image i (of n, side `size`) is dataset row `indices[i]` of
 * `epoch`. Returns new pixels; `images` is left as it is.
 */
export function augmentImages(
  images: Uint8Array,
  n: number,
  size: number,
  policy: AugmentPolicy,
  seed: number,
  epoch: number,
  indices: ArrayLike<number>,
): Uint8Array {
  const px = size * size;
  if (images.length !== n * px || indices.length !== n)
    throw new RangeError(`augmentImages: ${images.length} pixels and ${indices.length} indices for ${n} images of ${size}x${size}`);
  const out = new Uint8Array(n * px);
  for (let i = 0; i < n; i++)
    warpImage(
      images.subarray(i * px, (i + 1) * px),
      size,
      augmentDraw(policy, seed, epoch, indices[i]!, size),
      out.subarray(i * px, (i + 1) * px),
    );
  return out;
}
