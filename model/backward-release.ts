import * as tf from '@tensorflow/tfjs';

/**
 * The part of a tfjs-core 4.22 tape node this module reads and wraps (engine.addTapeNode): the
 * tensors saved for its gradient and the gradient itself, which maps the node's output gradients
 * to one function per input.
 */
interface TapeNode {
  inputs: Record<string, tf.Tensor>;
  saved?: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
}

/** The engine's tape while a gradient is being taken (private engine state, tfjs-core 4.22). */
function activeTape(): TapeNode[] | null {
  return (tf.engine().state as unknown as { activeTape?: TapeNode[] | null }).activeTape ?? null;
}

/**
 * `f` (the function a tf.variableGrads / tf.grads call differentiates) made to free the backward
 * pass's memory as it goes. tfjs's engine keeps every intermediate gradient and every tensor saved
 * for the backward until the whole backward ends (one tidy around it, and the tape's saved tensors
 * disposed after it), so its peak is the forward's saved activations plus a gradient for every
 * one of them: for ViT-B/16 at batch 8 more than the wasm heap's 4 GiB (docs/performance.md,
 * "ViT-B/16 sizes"). Once the backward has passed a node, nothing reads its output gradients or
 * its saved tensors again (the tape runs in reverse order, and a node's output gradient is
 * complete before its node runs); so, at the end of `f` (the tape complete), each node's gradient
 * is wrapped to dispose those of the node before it. The same kernels run on the same values in
 * the same order: the gradients are the same bits, only held for less time.
 *
 * An input gradient that is the very tensor object of a gradient seen before (a gradient function
 * may hand its dy through) is cloned (wasm, cpu: no copy, a reference), so that every gradient the
 * engine keeps is its own object and disposing one never disposes another.
 */
export function releasingBackward<T extends tf.Tensor>(f: () => T): () => T {
  return () => {
    const y = f();
    const tape = activeTape();
    if (!tape) return y;
    const seen = new Set<tf.Tensor>();
    let done: { dys: tf.Tensor[]; saved: tf.Tensor[] } | null = null;
    const release = () => {
      if (!done) return;
      // A dy the caller passed in is kept (theirs); the saved tensors are kept by the engine for this node alone.
      for (const t of done.dys) if (!t.kept) t.dispose();
      for (const t of done.saved) t.dispose();
      done = null;
    };
    for (const node of tape) {
      const gradient = node.gradient;
      if (!gradient) continue;
      node.gradient = (dys) => {
        release();
        const given = dys.filter((d): d is tf.Tensor => d !== null);
        given.forEach((d) => seen.add(d));
        const inputs = gradient(dys);
        done = { dys: given, saved: node.saved ?? [] };
        const wrapped: Record<string, () => tf.Tensor> = {};
        for (const [name, dx] of Object.entries(inputs))
          wrapped[name] = () => {
            const g = dx();
            if (!seen.has(g)) {
              seen.add(g);
              return g;
            }
            const c = tf.clone(g);
            seen.add(c);
            return c;
          };
        return wrapped;
      };
    }
    return y;
  };
}
