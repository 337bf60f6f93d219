import * as tf from '@tensorflow/tfjs';
import { ATTENTION_HEADS_KERNELS, wasmAttentionHeadsActive } from '../kernels/tfjs/attention-heads.js';
import { DENSE_KERNEL, wasmDenseActive } from '../kernels/tfjs/dense.js';
import { GELU_KERNELS, wasmNormGeluActive } from '../kernels/tfjs/gelu.js';
import { LAYER_NORM_KERNELS } from '../kernels/tfjs/layer-norm.js';
import { MATMUL_MUL_KERNEL } from '../kernels/tfjs/matmul-mul.js';
import { SOFTMAX_GRAD_KERNEL, wasmSoftmaxGradActive } from '../kernels/tfjs/softmax-grad.js';

/**
 * Layer norm over the last axis of a 2-D tensor with a hand-written gradient: autodiff through
 * mean/variance records ~20 kernels per call, this backward needs 8, which matters on wasm.
 * On the wasm backend with SIMD both directions are one kernel each (simdLayerNorm below).
 */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps = 1e-5): tf.Tensor2D {
  const cols = x.shape[1];
  const simd =
    x.rank === 2 &&
    cols > 0 &&
    [x, gamma, beta].every((t) => t.dtype === 'float32') &&
    tf.util.arraysEqual(gamma.shape, [cols]) &&
    tf.util.arraysEqual(beta.shape, [cols]);
  if (simd && wasmNormGeluActive()) return simdLayerNorm(x, gamma, beta, eps);
  const f = tf.customGrad((xIn, gIn, bIn, save) => {
    const xi = xIn as tf.Tensor2D;
    const { mean, variance } = tf.moments(xi, -1, true);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const xhat = tf.mul(tf.sub(xi, mean), rstd);
    (save as tf.GradSaveFunc)([xhat, rstd, gIn as tf.Tensor]);
    const value = tf.add(tf.mul(xhat, gIn as tf.Tensor), bIn as tf.Tensor) as tf.Tensor2D;
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [xh, rs, g] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
        const dxhat = tf.mul(dy, g);
        const m1 = tf.mean(dxhat, -1, true);
        const m2 = tf.mean(tf.mul(dxhat, xh), -1, true);
        const dx = tf.mul(tf.sub(tf.sub(dxhat, m1), tf.mul(xh, m2)), rs);
        const dg = tf.sum(tf.mul(dy, xh), 0);
        const db = tf.sum(dy, 0);
        return [dx, dg, db];
      });
    return { value, gradFunc };
  });
  return f(x, gamma, beta) as tf.Tensor2D;
}

/**
 * layerNorm on the wasm backend's SIMD kernels (kernels/simd/norm-gelu.ts: the same math, one
 * kernel each way instead of ~8). The forward also returns each row's mean and rstd, which the
 * backward needs with x and gamma (xhat is recomputed there rather than kept).
 */
function simdLayerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor2D {
  const f = tf.customGrad((xIn, gIn, bIn, save) => {
    const [y, mean, rstd] = tf
      .engine()
      .runKernel(
        LAYER_NORM_KERNELS.layerNorm,
        { x: xIn as tf.Tensor, gamma: gIn as tf.Tensor, beta: bIn as tf.Tensor },
        { eps },
      ) as tf.Tensor[];
    (save as tf.GradSaveFunc)([xIn as tf.Tensor, gIn as tf.Tensor, mean!, rstd!]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [xs, g, m, r] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      return tf.engine().runKernel(LAYER_NORM_KERNELS.layerNormGrad, { dy, x: xs, gamma: g, mean: m, rstd: r }, {}) as tf.Tensor[];
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
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [xs, c] = saved as [tf.Tensor, tf.Tensor];
          const pdf = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), INV_SQRT_2PI);
          return [tf.mul(dy, tf.add(c, tf.mul(xs, pdf)))];
        }),
    };
  });
  return f(x) as T;
}

/**
 * QuickGELU, x sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with (open_clip
 * `quick_gelu`). A custom gradient keeps only x for the backward (autodiff keeps x and the sigmoid,
 * and 1.702 x lives to the end of the forward: three [tokens, 4 * width] tensors per block instead
 * of one), which recomputes the sigmoid; its kernels are autodiff's, in its order: the same bits.
 */
export function quickGelu<T extends tf.Tensor>(x: T): T {
  const f = tf.customGrad((xIn, save) => {
    const xi = xIn as tf.Tensor;
    (save as tf.GradSaveFunc)([xi]);
    return {
      value: tf.mul(xi, tf.sigmoid(tf.mul(xi, 1.702))),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const xs = saved[0]!;
          const s = tf.sigmoid(tf.mul(xs, 1.702));
          // d/dx through the product's x, then through the sigmoid (its gradient dy * y(1 - y)) and the scale.
          const ds = tf.mul(tf.mul(dy, xs), tf.mul(s, tf.sub(1, s)));
          return [tf.add(tf.mul(dy, s), tf.mul(ds, 1.702))];
        }),
    };
  });
  return f(x) as T;
}

/** gelu on the wasm backend's SIMD kernels (same formula; erf by a rational approximation). */
function simdGelu<T extends tf.Tensor>(x: T): T {
  const f = tf.customGrad((xIn, save) => {
    (save as tf.GradSaveFunc)([xIn as tf.Tensor]);
    return {
      value: tf.engine().runKernel(GELU_KERNELS.gelu, { x: xIn as tf.Tensor }, {}) as tf.Tensor,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [
        tf.engine().runKernel(GELU_KERNELS.geluGrad, { dy, x: saved[0]! }, {}) as tf.Tensor,
      ],
    };
  });
  return f(x) as T;
}

/** What dense does after x @ W + b: nothing, GELU, or adding a residual (`residual + (x W + b)`). */
export type DenseEpilogue = { gelu: true } | { residual: tf.Tensor2D };

/**
 * x @ W + b for 2-D x; with `{ gelu: true }` gelu(x @ W + b), with `{ residual: r }` r + (x @ W + b).
 * On the wasm backend with the SIMD GEMM the bias, the GELU and the residual are applied in the
 * GEMM's epilogue while the result is in cache (simdDense below: one kernel instead of two or
 * three full passes, the same bits); elsewhere they are the separate ops.
 */
export function dense(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D, then?: DenseEpilogue): tf.Tensor2D {
  const withGelu = then !== undefined && 'gelu' in then;
  const residual = then !== undefined && 'residual' in then ? then.residual : undefined;
  if (
    b &&
    x.rank === 2 &&
    w.rank === 2 &&
    [x, w, b, ...(residual ? [residual] : [])].every((t) => t.dtype === 'float32') &&
    tf.util.arraysEqual(b.shape, [w.shape[1]]) &&
    (!residual || tf.util.arraysEqual(residual.shape, [x.shape[0], w.shape[1]])) &&
    wasmDenseActive(withGelu)
  ) {
    return simdDense(x, w, b, withGelu, residual);
  }
  const y: tf.Tensor2D = b ? (tf.add(tf.matMul(x, w), b) as tf.Tensor2D) : tf.matMul(x, w);
  if (withGelu) return gelu(y);
  return residual ? (tf.add(residual, y) as tf.Tensor2D) : y;
}

/**
 * dense on the fused kernel (kernels/tfjs/dense.ts's CxrDense). The backward is the unfused
 * graph's, op for op: dz = dy (after a GELU, dy * gelu'(z), the kernel's second output, which is
 * CxrGeluGrad(dy, z) to the bit without evaluating erf and exp again), dx = dz W^T,
 * dW = x^T dz, db = the column sums of dz, and dy itself for the residual.
 */
function simdDense(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D, withGelu: boolean, residual?: tf.Tensor2D): tf.Tensor2D {
  const backward = (dz: tf.Tensor, xs: tf.Tensor, ws: tf.Tensor) => [
    tf.matMul(dz as tf.Tensor2D, ws as tf.Tensor2D, false, true),
    tf.matMul(xs as tf.Tensor2D, dz as tf.Tensor2D, true, false),
    tf.sum(dz, 0),
  ];
  if (residual) {
    const f = tf.customGrad((xIn, wIn, bIn, rIn, save) => {
      (save as tf.GradSaveFunc)([xIn as tf.Tensor, wIn as tf.Tensor]);
      const y = tf
        .engine()
        .runKernel(
          DENSE_KERNEL,
          { x: xIn as tf.Tensor, w: wIn as tf.Tensor, b: bIn as tf.Tensor, residual: rIn as tf.Tensor },
          { gelu: false },
        ) as tf.Tensor;
      return {
        value: y,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [...backward(dy, saved[0]!, saved[1]!), tf.reshape(dy, dy.shape)],
      };
    });
    return f(x, w, b, residual) as tf.Tensor2D;
  }
  const f = tf.customGrad((xIn, wIn, bIn, save) => {
    const inputs = { x: xIn as tf.Tensor, w: wIn as tf.Tensor, b: bIn as tf.Tensor };
    if (!withGelu) {
      (save as tf.GradSaveFunc)([xIn as tf.Tensor, wIn as tf.Tensor]);
      const y = tf.engine().runKernel(DENSE_KERNEL, inputs, { gelu: false }) as tf.Tensor;
      return { value: y, gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => backward(dy, saved[0]!, saved[1]!) };
    }
    const [y, slope] = tf.engine().runKernel(DENSE_KERNEL, inputs, { gelu: true }) as tf.Tensor[];
    (save as tf.GradSaveFunc)([xIn as tf.Tensor, wIn as tf.Tensor, slope!]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.tidy(() => backward(tf.mul(dy, saved[2]!), saved[0]!, saved[1]!));
    return { value: y!, gradFunc };
  });
  return f(x, w, b) as tf.Tensor2D;
}

/**
 * A transformer block's MLP with its residual: residual + (gelu(x W1 + b1) W2 + b2), i.e.
 * dense(dense(x, W1, b1, { gelu: true }), W2, b2, { residual }). On the wasm backend with the
 * SIMD GEMM it is one custom gradient over both layers, so that the GELU's backward,
 * (dy W2^T) * gelu'(z), is the epilogue of the product that makes dy W2^T (CxrMatMulMul) instead of
 * a pass of its own; the other gradients are the two dense layers', op for op (same bits).
 */
export function residualMlp(
  x: tf.Tensor2D,
  w1: tf.Tensor2D,
  b1: tf.Tensor1D,
  w2: tf.Tensor2D,
  b2: tf.Tensor1D,
  residual: tf.Tensor2D,
): tf.Tensor2D {
  const [rows, width] = x.shape;
  const hidden = w1.shape[1];
  const fits =
    [x, w1, b1, w2, b2, residual].every((t) => t.dtype === 'float32') &&
    w1.shape[0] === width &&
    tf.util.arraysEqual(b1.shape, [hidden]) &&
    w2.shape[0] === hidden &&
    tf.util.arraysEqual(b2.shape, [w2.shape[1]]) &&
    tf.util.arraysEqual(residual.shape, [rows, w2.shape[1]]);
  if (!fits || !wasmDenseActive(true)) return dense(dense(x, w1, b1, { gelu: true }), w2, b2, { residual });
  const f = tf.customGrad((xIn, w1In, b1In, w2In, b2In, rIn, save) => {
    const [hid, slope] = tf
      .engine()
      .runKernel(DENSE_KERNEL, { x: xIn as tf.Tensor, w: w1In as tf.Tensor, b: b1In as tf.Tensor }, { gelu: true }) as tf.Tensor[];
    const y = tf
      .engine()
      .runKernel(
        DENSE_KERNEL,
        { x: hid!, w: w2In as tf.Tensor, b: b2In as tf.Tensor, residual: rIn as tf.Tensor },
        { gelu: false },
      ) as tf.Tensor;
    (save as tf.GradSaveFunc)([xIn as tf.Tensor, w1In as tf.Tensor, hid!, slope!, w2In as tf.Tensor]);
    // In a tidy: dz would otherwise live to the end of the backward.
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [xs, w1s, hs, sl, w2s] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
        // c_proj's gradients, then c_fc's from dz = (dy W2^T) * gelu'(z).
        const dw2 = tf.matMul(hs, dy as tf.Tensor2D, true, false);
        const db2 = tf.sum(dy, 0);
        const dz = tf
          .engine()
          .runKernel(MATMUL_MUL_KERNEL, { a: dy, b: w2s, s: sl }, { transposeA: false, transposeB: true }) as tf.Tensor2D;
        const dx = tf.matMul(dz, w1s, false, true);
        const dw1 = tf.matMul(xs, dz, true, false);
        const db1 = tf.sum(dz, 0);
        return [dx, dw1, db1, dw2, db2, tf.reshape(dy, dy.shape)];
      });
    return { value: y, gradFunc };
  });
  return f(x, w1, b1, w2, b2, residual) as tf.Tensor2D;
}

/**
 * tf.softmax over the last axis. On the wasm backend with SIMD its gradient is one kernel
 * (CxrSoftmaxGrad: dy*y - sum(dy*y)*y in one pass per row, the bits of tfjs's four-kernel
 * gradient) instead of Multiply, Sum, Multiply and Sub over the whole tensor.
 */
export function softmax<T extends tf.Tensor>(x: T): T {
  if (x.dtype !== 'float32' || x.rank === 0 || !wasmSoftmaxGradActive()) return tf.softmax(x);
  const f = tf.customGrad((xIn, save) => {
    const y = tf.softmax(xIn as tf.Tensor);
    (save as tf.GradSaveFunc)([y]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [tf.engine().runKernel(SOFTMAX_GRAD_KERNEL, { dy, y: saved[0]! }, {}) as tf.Tensor],
    };
  });
  return f(x) as T;
}

/**
 * The attention's heads from the qkv projection [batch * tokens, 3 * heads * d] (q, k, v each
 * heads * d wide): [q * scale, k, v], each [batch * heads, tokens, d]. On the wasm backend with
 * SIMD one kernel each way (CxrAttentionHeads and its gradient: the transpose, the split and q's
 * scaling in one pass, the same bits); elsewhere the transpose, split and multiply below.
 */
export function attentionHeads(qkv: tf.Tensor2D, batch: number, heads: number, scale: number): [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D] {
  const [rows, cols] = qkv.shape;
  const tokens = rows / batch;
  const d = cols / (3 * heads);
  if (!Number.isInteger(tokens) || !Number.isInteger(d))
    throw new Error(`attentionHeads: qkv [${qkv.shape}] is not [batch * tokens, 3 * heads * d] for batch ${batch}, heads ${heads}`);
  if (qkv.dtype === 'float32' && wasmAttentionHeadsActive()) {
    return tf.engine().runKernel(ATTENTION_HEADS_KERNELS.split, { x: qkv }, { batch, heads, scale }) as [
      tf.Tensor3D,
      tf.Tensor3D,
      tf.Tensor3D,
    ];
  }
  // One 4-D transpose for q, k and v together (wasm's 5-D transpose is ~30x slower than its 4-D
  // one), then q, k, v are contiguous blocks of axis 1.
  const all = tf.transpose(tf.reshape(qkv, [batch, tokens, 3 * heads, d]), [0, 2, 1, 3]);
  const [q, k, v] = tf.split(all, 3, 1).map((t) => tf.reshape(t, [batch * heads, tokens, d])) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
  return [tf.mul(q, scale), k, v];
}

/** Rows scaled to unit L2 norm (eps keeps an all-zero row finite). */
export function l2Normalize(x: tf.Tensor2D, eps = 1e-12): tf.Tensor2D {
  return tf.mul(x, tf.rsqrt(tf.maximum(tf.sum(tf.square(x), -1, true), eps))) as tf.Tensor2D;
}
