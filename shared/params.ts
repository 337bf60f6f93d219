/**
 * The flat parameter layout: every trainable tensor of the model laid end to end in one float32
 * vector, in a fixed order. Gradients are flattened into the same layout before they are summed
 * over ranks; AdamW, ZeRO-1 shards, checkpoints and export all address parameters through it.
 *
 * Names follow open_clip's state-dict names for the image tower (`visual.conv1.weight`, ...), with
 * tensors kept in TensorFlow.js layouts (dense kernels [in, out], conv kernels [kh, kw, in, out]);
 * export transposes where PyTorch's layout differs.
 */
export interface ParamEntry {
  readonly name: string;
  readonly shape: readonly number[];
  /** Offset of the first element in the flat vector. */
  readonly offset: number;
  readonly size: number;
  /** AdamW weight decay applies (false for norms, biases, embeddings, temperature). */
  readonly decay: boolean;
}

export interface ParamLayout {
  readonly entries: readonly ParamEntry[];
  readonly total: number;
}

export function buildLayout(specs: readonly { name: string; shape: readonly number[]; decay: boolean }[]): ParamLayout {
  const seen = new Set<string>();
  let offset = 0;
  const entries = specs.map((s) => {
    if (seen.has(s.name)) throw new Error(`parameter layout: duplicate name '${s.name}'`);
    seen.add(s.name);
    const size = s.shape.reduce((a, b) => a * b, 1);
    const e: ParamEntry = { name: s.name, shape: [...s.shape], offset, size, decay: s.decay };
    offset += size;
    return e;
  });
  return { entries, total: offset };
}

/**
 * The first difference between two layouts, as a sentence, or null when they are the same.
 * Used to refuse resuming or loading into a model of another shape with the parameter named.
 */
export function layoutMismatch(expected: ParamLayout, got: ParamLayout): string | null {
  const n = Math.max(expected.entries.length, got.entries.length);
  for (let i = 0; i < n; i++) {
    const a = expected.entries[i];
    const b = got.entries[i];
    if (!a) return `unexpected extra parameter '${b!.name}' ${JSON.stringify(b!.shape)}`;
    if (!b) return `missing parameter '${a.name}' ${JSON.stringify(a.shape)}`;
    if (a.name !== b.name) return `parameter ${i} is '${b.name}', expected '${a.name}'`;
    if (a.shape.length !== b.shape.length || a.shape.some((d, k) => d !== b.shape[k]))
      return `parameter '${a.name}' has shape ${JSON.stringify(b.shape)}, expected ${JSON.stringify(a.shape)}`;
  }
  return null;
}
