import * as tf from '@tensorflow/tfjs';
import { NORM_GELU_KERNELS as K, wasmNormGeluActive } from '../wasm-kernels.js';

/**
 * Layer norm over the last axis of a 2-D tensor with a hand-written gradient: autodiff through
 * mean/variance records ~20 kernels per call, this backward needs 8, which matters on wasm.
 * On the wasm backend with SIMD both directions are one kernel each (simdLayerNorm below).
 */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps = 1e-5): tf.Tensor2D {
  const cols = x.shape[1];
  const simd = x.rank === 2 && cols > 0 && [x, gamma, beta].every((t) => t.dtype === 'float32') &&
    tf.util.arraysEqual(gamma.shape, [cols]) && tf.util.arraysEqual(beta.shape, [cols]);
  if (simd && wasmNormGeluActive()) return simdLayerNorm(x, gamma, beta, eps);
  const f = tf.customGrad((xIn, gIn, bIn, save) => {
    const xi = xIn as tf.Tensor2D;
    const { mean, variance } = tf.moments(xi, -1, true);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const xhat = tf.mul(tf.sub(xi, mean), rstd);
    (save as tf.GradSaveFunc)([xhat, rstd, gIn as tf.Tensor]);
    const value = tf.add(tf.mul(xhat, gIn as tf.Tensor), bIn as tf.Tensor) as tf.Tensor2D;
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [xh, rs, g] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
      const dxhat = tf.mul(dy, g);
      const m1 = tf.mean(dxhat, -1, true);
      const m2 = tf.mean(tf.mul(dxhat, xh), -1, true);
      const dx = tf.mul(tf.sub(tf.sub(dxhat, m1), tf.mul(xh, m2)), rs);
      const dg = tf.sum(tf.mul(dy, xh), 0);
      const db = tf.sum(dy, 0);
      return [dx, dg, db];
    };
    return { value, gradFunc };
  });
  return f(x, gamma, beta) as tf.Tensor2D;
}

/**
 * layerNorm on the wasm backend's SIMD kernels (worker/simd-norm-gelu.ts: the same math, one
 * kernel each way instead of ~8). The forward also returns each row's mean and rstd, which the
 * backward needs with x and gamma (xhat is recomputed there rather than kept).
 */
function simdLayerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor2D {
  const f = tf.customGrad((xIn, gIn, bIn, save) => {
    const [y, mean, rstd] = tf.engine().runKernel(K.layerNorm, { x: xIn as tf.Tensor, gamma: gIn as tf.Tensor, beta: bIn as tf.Tensor }, { eps }) as tf.Tensor[];
    (save as tf.GradSaveFunc)([xIn as tf.Tensor, gIn as tf.Tensor, mean!, rstd!]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [xs, g, m, r] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      return tf.engine().runKernel(K.layerNormGrad, { dy, x: xs, gamma: g, mean: m, rstd: r }, {}) as tf.Tensor[];
    };
    return { value: y!, gradFunc };
  });
  return f(x, gamma, beta) as tf.Tensor2D;
}

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/**
 * Exact (erf) GELU, as torch.nn.GELU() in open_clip, with its closed-form derivative. On the wasm
 * backend with SIMD both directions are one kernel each (simdGelu below).
 */
export function gelu<T extends tf.Tensor>(x: T): T {
  if (x.dtype === 'float32' && wasmNormGeluActive()) return simdGelu(x);
  const f = tf.customGrad((xIn, save) => {
    const xi = xIn as tf.Tensor;
    const cdf = tf.mul(0.5, tf.add(1, tf.erf(tf.mul(xi, SQRT1_2))));
    (save as tf.GradSaveFunc)([xi, cdf]);
    return {
      value: tf.mul(xi, cdf),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, c] = saved as [tf.Tensor, tf.Tensor];
        const pdf = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), INV_SQRT_2PI);
        return [tf.mul(dy, tf.add(c, tf.mul(xs, pdf)))];
      },
    };
  });
  return f(x) as T;
}

/** gelu on the wasm backend's SIMD kernels (same formula; erf by a rational approximation). */
function simdGelu<T extends tf.Tensor>(x: T): T {
  const f = tf.customGrad((xIn, save) => {
    (save as tf.GradSaveFunc)([xIn as tf.Tensor]);
    return {
      value: tf.engine().runKernel(K.gelu, { x: xIn as tf.Tensor }, {}) as tf.Tensor,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [tf.engine().runKernel(K.geluGrad, { dy, x: saved[0]! }, {}) as tf.Tensor],
    };
  });
  return f(x) as T;
}

/** x @ W + b for 2-D x. */
export function dense(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  const y = tf.matMul(x, w);
  return b ? (tf.add(y, b) as tf.Tensor2D) : (y as tf.Tensor2D);
}

/** Rows scaled to unit L2 norm (eps keeps an all-zero row finite). */
export function l2Normalize(x: tf.Tensor2D, eps = 1e-12): tf.Tensor2D {
  return tf.mul(x, tf.rsqrt(tf.maximum(tf.sum(tf.square(x), -1, true), eps))) as tf.Tensor2D;
}
