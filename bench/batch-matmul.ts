import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/errors.js';
import { loadLabelSet } from '../shared/labels.js';
import { initBackend } from '../worker/backend.js';
import { MODEL_PRESETS, resolveModelConfig } from '../worker/model/config.js';
import { setSimdMatMulScope, wasmBatchMatMulPath, type SimdMatMulScope } from '../worker/wasm-kernels.js';
import { trainingStep } from './step.js';

/**
 * `npm run bench -- batch-matmul [--models tiny,small] [--batch 32] [--image 64] [--reps 10]`:
 * the wasm backend's batched products (batch > 1: the attention products and their gradients)
 * on the SIMD GEMM (worker/simd-gemm.ts) next to tfjs-backend-wasm's own kernel (the reference),
 * measured in the same run, alternating; the dense (batch-1) products on the SIMD GEMM next to
 * XNNPACK, which keeps them; then one training step per model under tf.profile on each path: the
 * summed kernel time and the share of it in batch > 1 BatchMatMul.
 */
function arg(argv: string[], name: string, dflt: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : dflt;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const PATHS = ['fallback', 'simd'] as const;

/** The six batched products of one attention layer's forward and backward, [bh, T, d] heads. */
function attentionProducts(bh: number, T: number, d: number) {
  return [
    { name: 'q k^T', a: [bh, T, d], b: [bh, T, d], ta: false, tb: true },
    { name: 'p v', a: [bh, T, T], b: [bh, T, d], ta: false, tb: false },
    { name: 'dctx v^T', a: [bh, T, d], b: [bh, T, d], ta: false, tb: true },
    { name: 'p^T dctx', a: [bh, T, T], b: [bh, T, d], ta: true, tb: false },
    { name: 'ds k', a: [bh, T, T], b: [bh, T, d], ta: false, tb: false },
    { name: 'ds^T q', a: [bh, T, T], b: [bh, T, d], ta: true, tb: false },
  ];
}

/** The dense (batch-1) products of one transformer block, forward and gradients, R = B*T rows. */
function denseProducts(R: number, W: number) {
  const layer = (name: string, i: number, o: number) => [
    { name: `${name} fwd`, a: [R, i], b: [i, o], ta: false, tb: false },
    { name: `${name} dX`, a: [R, o], b: [i, o], ta: false, tb: true },
    { name: `${name} dW`, a: [R, i], b: [R, o], ta: true, tb: false },
  ];
  return [...layer('qkv', W, 3 * W), ...layer('out', W, W), ...layer('fc', W, 4 * W), ...layer('proj', 4 * W, W)];
}

/** FLOPs of a BatchMatMul from its input and output shapes (k = a's matrix size / m). */
function flops(a: number[], out: number[]): number {
  const r = out.length;
  const m = out[r - 2]!;
  const k = (a[a.length - 1]! * a[a.length - 2]!) / m;
  return 2 * out.reduce((x, y) => x * y, 1) * k;
}

async function profileStep(step: { run(): Promise<void> }) {
  const prof = await tf.profile(() => step.run());
  let total = 0;
  let bmm = 0;
  let bmmFlops = 0;
  for (const k of prof.kernels) {
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    total += ms;
    const out = k.outputShapes[0];
    if (k.name !== 'BatchMatMul' || !out || out.slice(0, -2).reduce((x, y) => x * y, 1) <= 1) continue;
    bmm += ms;
    bmmFlops += flops(k.inputShapes[0]!, out);
  }
  return { total, bmm, gflops: bmmFlops / bmm / 1e6 };
}

type Product = { name: string; a: number[]; b: number[]; ta: boolean; tb: boolean };

/** Median ms of `p` on each of two routes, alternating, and its FLOPs. */
function timeRoutes(p: Product, routes: [SimdMatMulScope, SimdMatMulScope], reps: number) {
  const a = tf.randomNormal(p.a, 0, 1, 'float32', 1);
  const b = tf.randomNormal(p.b, 0, 1, 'float32', 2);
  const ms: number[][] = [[], []];
  let work = 0;
  for (let rep = -1; rep < reps; rep++) {
    routes.forEach((route, i) => {
      setSimdMatMulScope(route);
      const t0 = performance.now();
      const c = tf.matMul(a, b, p.ta, p.tb); // wasm kernels run synchronously
      if (rep >= 0) ms[i]!.push(performance.now() - t0);
      work = flops(p.a, c.shape);
      c.dispose();
    });
  }
  a.dispose();
  b.dispose();
  setSimdMatMulScope('batched');
  return { ms: [median(ms[0]!), median(ms[1]!)], work };
}

function printRow(preset: string, p: Product, r: { ms: number[]; work: number }): void {
  const [s, f] = r.ms as [number, number];
  const shape = `[${p.a}]${p.ta ? 'T' : ''} x [${p.b}]${p.tb ? 'T' : ''}`;
  process.stdout.write(
    `${preset.padEnd(6)} ${p.name.padEnd(9)} ${shape.padEnd(32)} ${s.toFixed(2).padStart(8)} ${(r.work / s / 1e6).toFixed(1).padStart(8)} ${f.toFixed(2).padStart(8)} ${(r.work / f / 1e6).toFixed(1).padStart(8)} ${(f / s).toFixed(2).padStart(7)}x\n`,
  );
}

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  for (const m of models) if (!(MODEL_PRESETS as readonly string[]).includes(m)) throw new UserError(`--models: '${m}' is not one of ${MODEL_PRESETS.join(', ')}`);
  const batch = Number(arg(argv, 'batch', '32'));
  const image = Number(arg(argv, 'image', '64'));
  const reps = Number(arg(argv, 'reps', '10'));
  for (const [name, v] of [['batch', batch], ['image', image], ['reps', reps]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new UserError(`--${name}: expected a positive integer, got ${v}`);
  }
  await initBackend('wasm');
  setSimdMatMulScope('batched');
  if (wasmBatchMatMulPath() !== 'simd') {
    process.stdout.write('this engine cannot run the SIMD batched matMul (no wasm SIMD); nothing to compare\n');
    return;
  }
  process.stdout.write(`batched matMul on wasm, batch ${batch} of ${image}x${image}: SIMD GEMM vs tfjs-backend-wasm's kernel, median of ${reps} alternating runs\n`);
  process.stdout.write(`${'model'.padEnd(6)} ${'product'.padEnd(9)} ${'shape (a x b)'.padEnd(32)} ${'simd ms'.padStart(8)} ${'GFLOP/s'.padStart(8)} ${'wasm ms'.padStart(8)} ${'GFLOP/s'.padStart(8)} ${'speed-up'.padStart(8)}\n`);
  for (const preset of models) {
    const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
    const T = (image / cfg.patchSize) ** 2 + 1;
    for (const p of attentionProducts(batch * cfg.heads, T, cfg.width / cfg.heads)) printRow(preset, p, timeRoutes(p, ['batched', 'none'], reps));
  }
  // Why batch 1 stays on XNNPACK: the same comparison for the dense layers' products.
  process.stdout.write(`\ndense (batch-1) products: SIMD GEMM vs XNNPACK (the transposed ones after an explicit Transpose), median of ${reps}\n`);
  process.stdout.write(`${'model'.padEnd(6)} ${'product'.padEnd(9)} ${'shape (a x b)'.padEnd(32)} ${'simd ms'.padStart(8)} ${'GFLOP/s'.padStart(8)} ${'xnn ms'.padStart(8)} ${'GFLOP/s'.padStart(8)} ${'speed-up'.padStart(8)}\n`);
  for (const preset of models) {
    const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
    const T = (image / cfg.patchSize) ** 2 + 1;
    for (const p of denseProducts(batch * T, cfg.width)) printRow(preset, p, timeRoutes(p, ['all', 'batched'], reps));
  }
  process.stdout.write('\none training step under tf.profile (sum of kernel times; profiling adds a little to each)\n');
  process.stdout.write(`${'model'.padEnd(6)} ${'path'.padEnd(9)} ${'kernels ms'.padStart(11)} ${'batch>1 BatchMatMul ms'.padStart(23)} ${'share'.padStart(6)} ${'GFLOP/s'.padStart(8)}\n`);
  for (const preset of models) {
    const step = await trainingStep('wasm', preset, batch, image);
    await step.run(); // warm-up: kernels compiled, memory grown
    for (const path of PATHS) {
      setSimdMatMulScope(path === 'simd' ? 'batched' : 'none');
      const r = await profileStep(step);
      const label = path === 'simd' ? 'simd' : 'wasm';
      process.stdout.write(
        `${preset.padEnd(6)} ${label.padEnd(9)} ${r.total.toFixed(0).padStart(11)} ${r.bmm.toFixed(0).padStart(23)} ${((100 * r.bmm) / r.total).toFixed(0).padStart(5)}% ${r.gflops.toFixed(1).padStart(8)}\n`,
      );
    }
    step.dispose();
  }
  setSimdMatMulScope('batched');
}
