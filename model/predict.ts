import * as tf from '@tensorflow/tfjs';
import { cosineLogits } from './losses.js';
import type { CxrModel } from './vit.js';

/** Scores [n, L] (logits) for evaluation, computed in chunks to bound memory. */
export async function predictLogits(model: CxrModel, images: Uint8Array, n: number, chunk = 64): Promise<Float32Array> {
  const L = model.config.labels.length;
  const px = model.config.imageSize ** 2;
  const out = new Float32Array(n * L);
  for (let s = 0; s < n; s += chunk) {
    const m = Math.min(chunk, n - s);
    const logits = tf.tidy(() => {
      const z = model.encodeImages(model.pixelsToInput(images.subarray(s * px, (s + m) * px), m));
      if (model.config.head === 'text') return cosineLogits(z, model.encodeText().names, model.p('cls.log_scale'), model.p('cls.bias'));
      return tf.add(tf.matMul(z, model.p<tf.Tensor2D>('cls.weight')), model.p('cls.bias')) as tf.Tensor2D;
    });
    out.set((await logits.data()) as Float32Array, s * L);
    logits.dispose();
  }
  return out;
}
