/**
 * Packing many tensors into flat buckets so that gradients travel in a few large collectives
 * instead of one small collective per tensor (each collective costs a ring's worth of latency).
 * Buckets are runs of consecutive tensors, in order, so a bucket is one contiguous range of the
 * flat parameter layout.
 */
export interface Bucket {
  /** Index of the first tensor and one past the last. */
  readonly first: number;
  readonly end: number;
  /** Element offset of the bucket in the concatenation of all tensors, and its length. */
  readonly offset: number;
  readonly length: number;
}

/**
 * Groups consecutive tensors of the given sizes into buckets of at most `bucketElems` elements;
 * a tensor larger than that gets a bucket of its own (it is cut into chunks by the collective).
 */
export function packBuckets(sizes: readonly number[], bucketElems: number): Bucket[] {
  if (!Number.isInteger(bucketElems) || bucketElems < 1) throw new RangeError(`bucketElems must be a positive integer, got ${bucketElems}`);
  const buckets: Bucket[] = [];
  let first = 0;
  let offset = 0;
  let length = 0;
  sizes.forEach((n, i) => {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`tensor ${i}: size must be a non-negative integer, got ${n}`);
    if (length > 0 && length + n > bucketElems) {
      buckets.push({ first, end: i, offset, length });
      first = i;
      offset += length;
      length = 0;
    }
    length += n;
  });
  if (sizes.length > first) buckets.push({ first, end: sizes.length, offset, length });
  return buckets;
}

/** Copies tensors first..end-1 end to end into `out` (allocated when not given). */
export function flattenInto(tensors: readonly Float32Array[], bucket: Bucket, out = new Float32Array(bucket.length)): Float32Array {
  if (out.length !== bucket.length) throw new RangeError(`bucket of ${bucket.length} elements, buffer of ${out.length}`);
  let at = 0;
  for (let i = bucket.first; i < bucket.end; i++) {
    out.set(tensors[i]!, at);
    at += tensors[i]!.length;
  }
  if (at !== bucket.length)
    throw new RangeError(`tensors ${bucket.first}..${bucket.end - 1} hold ${at} elements, bucket expects ${bucket.length}`);
  return out;
}

/** Copies a flat bucket back into its tensors. */
export function unflattenFrom(flat: Float32Array, tensors: readonly Float32Array[], bucket: Bucket): void {
  let at = 0;
  for (let i = bucket.first; i < bucket.end; i++) {
    const t = tensors[i]!;
    t.set(flat.subarray(at, at + t.length));
    at += t.length;
  }
  if (at !== flat.length) throw new RangeError(`bucket of ${flat.length} elements unpacked into tensors of ${at}`);
}
