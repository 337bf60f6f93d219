import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import { loadLabelSet } from '../shared/labels.js';
import { initBackend } from '../kernels/backend.js';
import { MODEL_PRESETS, resolveModelConfig } from '../model/config.js';
import { DEFAULT_BLOCKING, type GemmBlocking, type GemmVariant } from '../kernels/simd/gemm.js';
import { wasmGemmVariant } from '../kernels/tfjs/batch-mat-mul.js';
import { withKernelOptions, type GemmVariantChoice, type KernelOptions, type SimdMatMulScope } from '../kernels/options.js';
import { trainingStep } from './step.js';
import { median } from './median.js';
import { arg } from './args.js';

/**
 * `npm run bench -- batch-matmul [--models tiny,small] [--batch 32] [--image 64] [--reps 10] [--blocking]`:
 * every BatchMatMul of a wasm training step on each path, side by side, measured in the same run
 * (alternating call by call): the SIMD GEMM's FMA build and its mul+add build
 * (kernels/simd/gemm.ts) next to the backend's own kernels, the reference: tfjs-backend-wasm's
 * scalar loop for the batched attention products, XNNPACK for the dense (batch-1) ones. Then one
 * training step per model under tf.profile on each path. `speed-up` is the reference's time over
 * the first build's. `--blocking` adds a sweep of the GEMM's k and m block sizes over the dense
 * products (FMA build).
 */

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

/** Sum of kernel times in one profiled step; BatchMatMul's part, and of it the batch > 1 products, with their GFLOP/s. */
async function profileStep(step: { run(): Promise<void> }) {
  const prof = await tf.profile(() => step.run());
  const r = { total: 0, bmm: 0, bmmFlops: 0, batched: 0 };
  for (const k of prof.kernels) {
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    r.total += ms;
    const out = k.outputShapes[0];
    if (k.name !== 'BatchMatMul' || !out) continue;
    r.bmm += ms;
    r.bmmFlops += flops(k.inputShapes[0]!, out);
    if (out.slice(0, -2).reduce((x, y) => x * y, 1) > 1) r.batched += ms;
  }
  return { ...r, gflops: r.bmmFlops / r.bmm / 1e6 };
}

type Product = { name: string; a: number[]; b: number[]; ta: boolean; tb: boolean };

/** A way to run BatchMatMul: which products go to the SIMD GEMM, which build of it, what blocking. */
interface Route {
  label: string;
  scope: SimdMatMulScope;
  variant: GemmVariantChoice;
  blocking?: GemmBlocking;
}

/** The kernel options a route runs with. */
function routeOptions(r: Route): Partial<KernelOptions> {
  return { matMulScope: r.scope, gemmVariant: r.variant, gemmBlocking: r.blocking ?? DEFAULT_BLOCKING };
}

/**
 * Median ms of `p` on each route, alternating call by call, and its FLOPs. The order changes from
 * one round to the next (rotated, and reversed every other round, so each route follows each of
 * the others): the call after the scalar kernel finds the operands evicted from L2 (the attention
 * operands are 1-4 MiB), and a route that always came right after it would pay for that.
 */
function timeRoutes(p: Product, routes: readonly Route[], reps: number) {
  const a = tf.randomNormal(p.a, 0, 1, 'float32', 1);
  const b = tf.randomNormal(p.b, 0, 1, 'float32', 2);
  const ms: number[][] = routes.map(() => []);
  let work = 0;
  for (let rep = -2; rep < reps; rep++) {
    routes.forEach((_, j) => {
      const i = (((rep + 2) % 2 ? routes.length - 1 - j : j) + rep + 2) % routes.length;
      withKernelOptions(routeOptions(routes[i]!), () => {
        const t0 = performance.now();
        const c = tf.matMul(a, b, p.ta, p.tb); // wasm kernels run synchronously
        if (rep >= 0) ms[i]!.push(performance.now() - t0);
        work = flops(p.a, c.shape);
        c.dispose();
      });
    });
  }
  a.dispose();
  b.dispose();
  return { ms: ms.map(median), work };
}

const col = (s: string, w = 8) => s.padStart(w);

function header(routes: readonly Route[]): void {
  process.stdout.write(
    `${'model'.padEnd(6)} ${'product'.padEnd(9)} ${'shape (a x b)'.padEnd(32)}${routes.map((r) => ` ${col(`${r.label} ms`, 11)} ${col('GFLOP/s')}`).join('')} ${col('speed-up', 9)}\n`,
  );
}

function printRow(preset: string, p: Product, r: { ms: number[]; work: number }): void {
  const shape = `[${p.a}]${p.ta ? 'T' : ''} x [${p.b}]${p.tb ? 'T' : ''}`;
  const cells = r.ms.map((ms) => ` ${col(ms.toFixed(2), 11)} ${col((r.work / ms / 1e6).toFixed(1))}`).join('');
  process.stdout.write(
    `${preset.padEnd(6)} ${p.name.padEnd(9)} ${shape.padEnd(32)}${cells} ${col((r.ms[r.ms.length - 1]! / r.ms[0]!).toFixed(2) + 'x', 9)}\n`,
  );
}

export async function run(argv: string[]): Promise<void> {
  const models = arg(argv, 'models', 'tiny,small').split(',');
  for (const m of models)
    if (!(MODEL_PRESETS as readonly string[]).includes(m))
      throw new UserError(`--models: '${m}' is not one of ${MODEL_PRESETS.join(', ')}`);
  const batch = Number(arg(argv, 'batch', '32'));
  const image = Number(arg(argv, 'image', '64'));
  const reps = Number(arg(argv, 'reps', '10'));
  for (const [name, v] of [
    ['batch', batch],
    ['image', image],
    ['reps', reps],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) throw new UserError(`--${name}: expected a positive integer, got ${v}`);
  }
  const info = await initBackend('wasm');
  process.stdout.write(`backend: ${info.reason}\n`);
  const simd = (variant: GemmVariant, label: string): Route[] => {
    const ok = withKernelOptions({ gemmVariant: variant }, () => wasmGemmVariant() === variant);
    if (!ok) process.stdout.write(`(the ${label} build cannot run on this engine: left out)\n`);
    return ok ? [{ label, scope: 'all', variant }] : [];
  };
  const builds = [...simd('fma', 'fma'), ...simd('muladd', 'mul+add')];
  if (!builds.length) {
    process.stdout.write('this engine cannot run the SIMD GEMM (no wasm SIMD); nothing to compare\n');
    return;
  }
  // V8 runs a wasm function on its baseline compiler until it has run a while, then switches to
  // the optimised code compiled in the background: without this, the first rows time the former.
  for (const r of builds) {
    withKernelOptions(routeOptions(r), () => {
      const t0 = performance.now();
      while (performance.now() - t0 < 1500) tf.tidy(() => tf.matMul(tf.ones([130, 65, 65]), tf.ones([130, 65, 32])).dataSync());
    });
  }
  const shapes = (preset: string) => {
    const cfg = resolveModelConfig({ preset, imageSize: image, labels: loadLabelSet('chexpert14').labels });
    const T = (image / cfg.patchSize) ** 2 + 1;
    return { attention: attentionProducts(batch * cfg.heads, T, cfg.width / cfg.heads), dense: denseProducts(batch * T, cfg.width) };
  };
  process.stdout.write(
    `\nbatched (attention) products, batch ${batch} of ${image}x${image}: SIMD GEMM builds (alternating) vs tfjs-backend-wasm's kernel (timed apart), median of ${reps} runs\n`,
  );
  const scalar: Route = { label: 'wasm', scope: 'none', variant: 'auto' };
  header([...builds, scalar]);
  for (const preset of models) {
    for (const p of shapes(preset).attention) {
      // The scalar kernel is timed on its own: a call right after it (~18 ms of strided reads)
      // finds its operands evicted, which in one alternation made the build timed after it look
      // up to 1.5x slower than in the step (where both builds were within ~10%).
      const simd = timeRoutes(p, builds, reps);
      const ref = timeRoutes(p, [scalar], reps);
      printRow(preset, p, { ms: [...simd.ms, ...ref.ms], work: simd.work });
    }
  }

  process.stdout.write(
    `\ndense (batch-1) products: SIMD GEMM builds vs XNNPACK (the transposed ones after an explicit Transpose), median of ${reps}\n`,
  );
  const denseRoutes: Route[] = [...builds, { label: 'xnn', scope: 'batched', variant: 'auto' }];
  header(denseRoutes);
  const totals = new Map<string, number[]>();
  for (const preset of models) {
    const sum = denseRoutes.map(() => 0);
    for (const p of shapes(preset).dense) {
      const r = timeRoutes(p, denseRoutes, reps);
      printRow(preset, p, r);
      r.ms.forEach((ms, i) => (sum[i]! += ms));
    }
    totals.set(preset, sum);
  }
  for (const [preset, sum] of totals) {
    process.stdout.write(
      `${preset.padEnd(6)} ${'sum'.padEnd(9)} ${'(one block, forward + backward)'.padEnd(32)}${sum.map((ms) => ` ${col(ms.toFixed(2), 11)} ${col('')}`).join('')} ${col((sum[sum.length - 1]! / sum[0]!).toFixed(2) + 'x', 9)}\n`,
    );
  }

  if (argv.includes('--blocking') && builds[0]) {
    const b = builds[0];
    const grid: GemmBlocking[] = [];
    for (const kc of [128, 256, 512, 1e9]) for (const mc of [48, 120, 240, 1e9]) grid.push({ kc, mc });
    const name = (g: GemmBlocking) => `${g.kc >= 1e9 ? 'all' : g.kc}/${g.mc >= 1e9 ? 'all' : g.mc}`;
    process.stdout.write(
      `\nblocking sweep, ${b.label} build, kc/mc (k block / m block; 'all' = not blocked): summed median ms of one block's dense products (GFLOP/s)\n`,
    );
    process.stdout.write(`${'kc/mc'.padEnd(10)}${models.map((m) => col(m, 18)).join('')}\n`);
    const rows = new Map(grid.map((g) => [name(g), models.map(() => ({ ms: 0, work: 0 }))]));
    for (const [mi, preset] of models.entries()) {
      for (const p of shapes(preset).dense) {
        const r = timeRoutes(
          p,
          grid.map((g) => ({ ...b, label: name(g), blocking: g })),
          reps,
        );
        grid.forEach((g, i) => {
          const cell = rows.get(name(g))![mi]!;
          cell.ms += r.ms[i]!;
          cell.work += r.work;
        });
      }
    }
    for (const [label, cells] of rows) {
      process.stdout.write(
        `${label.padEnd(10)}${cells.map((c) => col(`${c.ms.toFixed(1)} (${(c.work / c.ms / 1e6).toFixed(1)})`, 18)).join('')}\n`,
      );
    }
  }

  const stepRoutes: Route[] = [
    { label: 'wasm/xnn', scope: 'none', variant: 'auto' },
    ...builds.flatMap((r) => [
      { ...r, label: `${r.label}, batched`, scope: 'batched' as const },
      { ...r, label: `${r.label}, all`, scope: 'all' as const },
    ]),
  ];
  process.stdout.write(
    '\none training step under tf.profile per path (sum of kernel times; profiling adds a little to each); paths: which products the GEMM takes (batched: batch > 1, the rest on XNNPACK; all), wasm/xnn: none\n',
  );
  process.stdout.write(
    `${'model'.padEnd(6)} ${'path'.padEnd(18)} ${col('kernels ms', 11)} ${col('BatchMatMul ms', 15)} ${col('of it batch>1', 14)} ${col('share', 6)} ${col('GFLOP/s')}\n`,
  );
  for (const preset of models) {
    const step = await trainingStep('wasm', preset, batch, image);
    for (const r of stepRoutes) {
      await withKernelOptions(routeOptions(r), () => step.run()); // warm-up on this path: kernels compiled and tiered up, memory grown
    }
    for (const r of stepRoutes) {
      const p = await withKernelOptions(routeOptions(r), () => profileStep(step));
      process.stdout.write(
        `${preset.padEnd(6)} ${r.label.padEnd(18)} ${col(p.total.toFixed(0), 11)} ${col(p.bmm.toFixed(0), 15)} ${col(p.batched.toFixed(0), 14)} ${col(((100 * p.bmm) / p.total).toFixed(0) + '%', 6)} ${col(p.gflops.toFixed(1))}\n`,
      );
    }
    step.dispose();
  }
}
