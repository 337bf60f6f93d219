import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { UserError } from '../shared/util/errors.js';
import { packageRoot } from '../shared/util/paths.js';
import { loadLabelSet } from '../shared/labels.js';
import { mulberry32 } from '../shared/random/generators.js';
import { initBackend, wasmHeapBytes, type BackendChoice } from '../kernels/backend.js';
import { WASM32_MAX_BYTES } from '../kernels/heap-pages.js';
import { labelPriorTarget } from '../model/label-prior.js';
import { type ModelConfig, resolveModelConfig } from '../model/config.js';
import type { ClipTextShape } from '../model/text/clip-text.js';
import { trimTokenRows } from '../model/text/tower.js';
import { CxrModel, initialParams, labelPrompts } from '../model/vit.js';
import { adamwStep, clipFactor, decayMask, sumOfSquares } from '../worker/steps/adamw.js';
import { computeGradients, localComm } from '../worker/steps/forward-backward.js';
import { withKernelOptions, type KernelOptions } from '../kernels/options.js';
import { matMulFlops, simdPeak } from './simd-peak.js';
import { runTorchReference } from './torch-reference.js';
import { median } from './median.js';
import { arg } from './args.js';

/**
 * `npm run bench -- step [--models tiny,small | --pretrained-shape vit-b16] [--backends wasm,cpu|--backend webgpu] [--reference on|off] [--batch 32] [--image 64] [--steps 5] [--warmup 5] [--norm-gelu on|off|ab] [--epilogue on|off|ab] [--softmax-grad on|off|ab] [--transpose on|off|ab]`:
 * time of one full training step (forward, backward, all three losses, clipping, AdamW, writing the
 * parameters back) per model and backend, next to PyTorch's time for the same architecture, batch
 * and losses measured in the same run on one thread (bench/reference/vit_step.py), as installed
 * and again with its tensors on transparent huge pages (the `PyTorch THP` columns; the wasm heap
 * is on them by default, kernels/heap-pages.ts). `--warmup` steps run first on both sides: a fresh
 * tfjs process is ~10% slower for its first steps (V8 still optimising, the heap faulting in).
 * `--norm-gelu` (wasm only): LayerNorm/GELU on the SIMD kernels (on, the default), on tfjs
 * kernels (off), or `ab`: both, steps alternating on one model, each path a row.
 * `--epilogue` (wasm only): dense layers' bias, GELU and residual add in the SIMD GEMM's epilogue
 * (on, the default), as separate kernels (off), or `ab` as above; `--softmax-grad` (wasm only):
 * the attention softmax's gradient in one pass (on) or as tfjs's four kernels (off), or `ab`;
 * `--transpose` (wasm only): Transpose as row copies and the attention's head split and merge as
 * one kernel each (on), or the backend's Transpose with tfjs's split, multiply and concat (off), or `ab`.
 * Several `ab`s run every combination. `--backend webgpu` (or `webgpu-software`, the software
 * adapter) times the step on WebGPU and names the adapter; the PyTorch reference is off by default
 * when only WebGPU runs (`--reference on` runs it anyway).
 * `--pretrained-shape vit-b16`: OpenAI CLIP ViT-B/16 as `--pretrained` builds it, the image tower
 * (QuickGELU) and CLIP's text tower (width 512, 12 layers, 8 heads, vocabulary 49408) trained in
 * the step on the chexpert14 prompts' real token ids (test/fixtures/prompt-tokens.json, cut to the
 * longest prompt on both sides), batch 8 at 224 unless given; sized to finish in minutes: wasm
 * only, 1 warm-up and 2 timed steps, PyTorch once (no THP rerun, no profiled split unless
 * `--ceiling`) within `--torch-budget` seconds (default 300), after which its reason is printed;
 * `--models vit-b16` gets the same sizing. Every run also prints each side's CPU time per step (wasm
 * with every switch on; less inflated than the wall clock by other jobs on a shared machine) and
 * the wasm heap's high-water mark against the 4 GiB a wasm32 memory can reach.
 */

/** One full training step of `preset` on `backend` (the setup the step bench times), run by run(). */
export async function trainingStep(
  backend: BackendChoice,
  preset: string,
  batch: number,
  image: number,
): Promise<{ run(): Promise<void>; dispose(): void }> {
  const { name } = await initBackend(backend);
  if (tf.getBackend() !== name) await tf.setBackend(name);
  const set = loadLabelSet('chexpert14');
  const L = set.labels.length;
  const cfg = benchConfig(preset, image);
  const params = initialParams(cfg, 0);
  const model = new CxrModel(cfg, params);
  const mask = decayMask(model.layout);
  const m = new Float32Array(params.length);
  const v = new Float32Array(params.length);
  const r = mulberry32(1);
  const images = Uint8Array.from({ length: batch * image * image }, () => Math.floor(r() * 256));
  const labels = Float32Array.from({ length: batch * L }, () => (r() < 0.5 ? 1 : 0));
  const opts = {
    weights: { classification: 1, contrastive: 0.5, labelPrior: 0.1 },
    targets: { uncertainty: set.labels.map(() => 'ignore' as const), blank: 'mask' as const, seed: 0 },
    posWeight: null,
    priorTarget: labelPriorTarget('orth', set.labels, null),
  };
  let s = 0;
  return {
    async run() {
      s++;
      const g = await computeGradients(
        model,
        { n: batch, images, labels, indices: Array.from({ length: batch }, (_, i) => i), epoch: 0 },
        localComm,
        opts,
      );
      const clip = clipFactor(Math.sqrt(sumOfSquares(g.grads)), 1);
      adamwStep(
        params,
        g.grads,
        m,
        v,
        { start: 0, end: params.length },
        { lr: 1e-4, beta1: 0.9, beta2: 0.98, eps: 1e-6, weightDecay: 0.05 },
        s,
        mask,
        clip,
      );
      model.assignFlat(params);
    },
    dispose: () => model.dispose(),
  };
}

/** CLIP ViT-B/16's text tower (open_clip ViT-B-16 text_cfg). */
const CLIP_B16_TEXT: ClipTextShape = {
  kind: 'clip',
  vocabSize: 49408,
  contextLength: 77,
  width: 512,
  heads: 8,
  layers: 12,
  embedDim: 512,
  quickGelu: true,
  prefix: '',
};
/** `--pretrained-shape NAME` is a model row named `pretrained:NAME`. */
const PRETRAINED = 'pretrained:';

/** The chexpert14 prompts' token ids from open_clip's tokenizer, cut to the longest. */
function clipPromptTokens(): number[][] {
  const fixture = JSON.parse(readFileSync(path.join(packageRoot, 'test', 'fixtures', 'prompt-tokens.json'), 'utf8')) as {
    clip_openai: Record<string, number[]>;
  };
  const rows = labelPrompts(loadLabelSet('chexpert14').labels).map((p) => fixture.clip_openai[p]!);
  return trimTokenRows(CLIP_B16_TEXT, rows);
}

/** A preset's configuration, or the pretrained shape: vit-b16 with QuickGELU and CLIP's text tower in the step. */
function benchConfig(preset: string, image: number): ModelConfig {
  const labels = loadLabelSet('chexpert14').labels;
  if (!preset.startsWith(PRETRAINED)) return resolveModelConfig({ preset, imageSize: image, labels });
  const shape = preset.slice(PRETRAINED.length);
  if (shape !== 'vit-b16') throw new UserError(`--pretrained-shape '${shape}' is not one of vit-b16`);
  const c = resolveModelConfig({ preset: 'vit-b16', imageSize: image, labels });
  return {
    ...c,
    act: 'quick_gelu',
    text: { kind: 'tower', dim: CLIP_B16_TEXT.embedDim, tower: CLIP_B16_TEXT, tokens: clipPromptTokens() },
  };
}

/** The wasm switches a row of the table runs with. */
interface Setting {
  normGelu: boolean;
  epilogue: boolean;
  softmaxGrad: boolean;
  transpose: boolean;
}

/** Every wasm option on: the default. */
const ALL_ON: Setting = { normGelu: true, epilogue: true, softmaxGrad: true, transpose: true };

/** The kernel options a setting stands for. */
function settingOptions(on: Setting): Partial<KernelOptions> {
  return {
    normGelu: on.normGelu,
    denseEpilogue: on.epilogue,
    softmaxGrad: on.softmaxGrad,
    transpose: on.transpose,
    attentionHeads: on.transpose,
  };
}

/**
 * Step times per setting of the wasm switches, the settings alternating step by step: wall clock
 * and the process's CPU time (all its threads), which a loaded machine inflates less.
 */
async function tfjsStepMs(
  backend: BackendChoice,
  preset: string,
  batch: number,
  image: number,
  steps: number,
  warmup: number,
  settings: readonly Setting[],
): Promise<{ wall: number[][]; cpu: number[][] }> {
  const step = await trainingStep(backend, preset, batch, image);
  const wall: number[][] = settings.map(() => []);
  const cpu: number[][] = settings.map(() => []);
  try {
    for (let s = 1; s <= warmup + steps; s++) {
      for (const [i, on] of settings.entries()) {
        await withKernelOptions(settingOptions(on), async () => {
          const t0 = performance.now();
          const c0 = process.cpuUsage();
          await step.run();
          const c = process.cpuUsage(c0);
          // The first steps compile the kernels, let V8 optimise tfjs's JavaScript and fault the heap in.
          if (s > warmup) {
            wall[i]!.push(performance.now() - t0);
            cpu[i]!.push((c.user + c.system) / 1000);
          }
        });
      }
    }
  } finally {
    step.dispose();
  }
  return { wall, cpu };
}

// CxrDense and CxrMatMulMul are matMuls with an epilogue (bias, GELU, residual; a multiply): their time counts as the matMuls'.
const MATMUL_KERNELS = new Set(['BatchMatMul', '_FusedMatMul', 'CxrDense', 'CxrMatMulMul']);

/** One profiled step (after a warm-up one): the matMuls' FLOPs and kernel ms, and the other kernels' ms. */
async function profiledStep(
  backend: BackendChoice,
  preset: string,
  batch: number,
  image: number,
): Promise<{ matMulFlops: number; matMulMs: number; otherMs: number }> {
  const step = await trainingStep(backend, preset, batch, image);
  try {
    await step.run();
    const prof = await tf.profile(() => step.run());
    const r = { matMulFlops: 0, matMulMs: 0, otherMs: 0 };
    for (const k of prof.kernels) {
      // A custom gradient's forward is profiled as one more entry (named for its scope, 'forward')
      // whose time includes the registered kernels it ran, which have their own entries.
      if (!tf.getKernel(k.name, backend)) continue;
      const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
      if (MATMUL_KERNELS.has(k.name)) {
        r.matMulFlops += matMulFlops(k.inputShapes[0]!, k.outputShapes[0]!);
        r.matMulMs += ms;
      } else r.otherMs += ms;
    }
    return r;
  } finally {
    step.dispose();
  }
}

/**
 * How far any wasm GEMM could take the step: its matMuls' FLOPs at this engine's SIMD peak
 * (bench/simd-peak.ts) against PyTorch's whole step, and what the 1.5x goal would leave for
 * everything but the matMuls. `stepMs` is our median step on wasm, for our rest (everything
 * outside the matMuls' kernels). With `torchMatMulMs` (PyTorch's matMuls in one profiled step of
 * the same run) also PyTorch's rate and rest, and the matMul rate the goal needs.
 */
async function wasmCeiling(
  preset: string,
  batch: number,
  image: number,
  stepMs: number,
  torchMs: number | null,
  torchMatMulMs: number | null,
): Promise<string> {
  const p = await profiledStep('wasm', preset, batch, image);
  const mulAdd = simdPeak('mul-add');
  const fma = simdPeak('fma');
  const peak = Math.max(mulAdd?.gflops ?? 0, fma?.gflops ?? 0);
  const gflop = p.matMulFlops / 1e9;
  /** GFLOP/s of the step's matMuls done in `ms`. */
  const rate = (ms: number) => gflop / (ms / 1000);
  const atPeakMs = (gflop / peak) * 1000;
  const oursRest = Math.max(0, stepMs - p.matMulMs);
  const lines = [
    `  wasm ceiling: the step's matMuls are ${gflop.toFixed(2)} GFLOP; one profiled step spends ${p.matMulMs.toFixed(0)} ms ` +
      `of kernel time in them (${rate(p.matMulMs).toFixed(1)} GFLOP/s) and ${p.otherMs.toFixed(0)} ms in the other kernels; ` +
      `the rest of our step (other kernels, JavaScript) ${oursRest.toFixed(0)} ms`,
    "    this engine's SIMD peak, measured now (a GEMM micro-kernel's loop from L1; no whole product reaches it): " +
      `mul+add ${mulAdd ? `${mulAdd.gflops.toFixed(1)} GFLOP/s (${mulAdd.tile})` : 'n/a'}, ` +
      `relaxed-SIMD FMA ${fma ? `${fma.gflops.toFixed(1)} GFLOP/s (${fma.tile})` : 'not available on this engine'}`,
    `    at that peak the matMuls alone take >= ${atPeakMs.toFixed(0)} ms`,
  ];
  if (torchMs === null) return lines.join('\n') + '\n';
  const goalMs = 1.5 * torchMs;
  lines[2] += ` = ${(atPeakMs / torchMs).toFixed(2)}x PyTorch's whole step`;
  if (atPeakMs >= goalMs) {
    lines.push(`    goal (1.5x = ${goalMs.toFixed(0)} ms) out of reach on wasm here: the matMuls at the engine's peak alone take longer`);
  } else if (torchMatMulMs === null) {
    lines[2] += ` (which does them at ${rate(torchMs).toFixed(1)} GFLOP/s, everything else included)`;
    lines.push(
      `    goal (1.5x = ${goalMs.toFixed(0)} ms) would leave ${(goalMs - atPeakMs).toFixed(0)} ms for the rest if every matMul ran at the peak (ours is ${oursRest.toFixed(0)} ms)`,
    );
  } else {
    const torchRest = Math.max(0, torchMs - torchMatMulMs);
    const need = goalMs > oursRest ? rate(goalMs - oursRest) : null;
    lines.push(
      `    PyTorch, one profiled step: its matMuls (BLAS) take ${torchMatMulMs.toFixed(0)} ms, ${rate(torchMatMulMs).toFixed(1)} GFLOP/s on the same FLOPs = ${(rate(torchMatMulMs) / peak).toFixed(2)}x this engine's peak; the rest of its step ${torchRest.toFixed(0)} ms`,
      `    goal (1.5x = ${goalMs.toFixed(0)} ms) would leave ${(goalMs - atPeakMs).toFixed(0)} ms for the rest if every matMul ran at the peak ` +
        `(${(((goalMs - atPeakMs) / torchRest) * 100).toFixed(0)}% of PyTorch's rest; ours is ${oursRest.toFixed(0)} ms); ` +
        `with the rest as it is, the matMuls would need ${need === null ? 'less than no time' : `${need.toFixed(1)} GFLOP/s (${((need / peak) * 100).toFixed(0)}% of the peak)`}`,
    );
  }
  return lines.join('\n') + '\n';
}

/**
 * glibc's tunable that makes malloc advise its mappings onto transparent huge pages: the PyTorch
 * reference run a second time with it, next to our wasm heap, which kernels/heap-pages.ts advises
 * onto them, so that the table also compares like with like.
 */
const TORCH_THP_ENV = { GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' };

interface TorchSteps {
  ms: number[];
  /** Each timed step's CPU time. */
  cpu_ms?: number[];
  params: number;
  torch: string;
  /** With `profile`: one more step's matMul self time (bench/reference/vit_step.py), or why the profiler failed. */
  matmul_ms?: number;
  profile_error?: string;
  /** The GEMM rate of one [1024, 768] x [768, 3072] product, and the BLAS library PyTorch loaded. */
  gemm_gflops?: number;
  blas?: string;
  /** Set when the reference stopped at its budget (no step times then). */
  error?: string;
}

/** Debian's torch on netlib's reference BLAS (libblas3's `blas/libblas.so`) instead of OpenBLAS: what to install. */
function blasHint(blas: string | undefined): string {
  return blas && /\/blas\/libblas\.so/.test(blas) ? " (netlib's reference BLAS: apt-get install -y libopenblas0-pthread)" : '';
}

function torchStepMs(
  preset: string,
  batch: number,
  image: number,
  steps: number,
  warmup: number,
  env: NodeJS.ProcessEnv = {},
  profile = false,
  budgetS = 0,
): TorchSteps | string {
  const cfg = benchConfig(preset, image);
  const text: string[] = [];
  if (cfg.text.kind === 'tower' && cfg.text.tower.kind === 'clip') {
    const t = cfg.text.tower;
    const tokens = path.join(tmpdir(), `cxr-bench-tokens-${process.pid}.json`);
    writeFileSync(tokens, JSON.stringify(cfg.text.tokens));
    text.push(
      ...['--tokens', tokens, '--vocab', t.vocabSize, '--context', t.contextLength, '--text-width', t.width, '--text-layers', t.layers].map(
        String,
      ),
      ...['--text-heads', t.heads, '--quick-gelu', t.quickGelu ? 1 : 0].map(String),
    );
  } else if (cfg.act === 'quick_gelu') text.push('--quick-gelu', '1');
  const a = [
    '--image',
    image,
    '--patch',
    cfg.patchSize,
    '--width',
    cfg.width,
    '--layers',
    cfg.layers,
    '--heads',
    cfg.heads,
    '--dim',
    cfg.embedDim,
    '--labels',
    14,
    '--batch',
    batch,
    '--steps',
    steps,
    '--warmup',
    warmup,
    '--threads',
    1,
    '--pool',
    cfg.pool ?? 'tok',
    '--rank',
    cfg.spatialRank ?? 16,
    '--image-norm',
    cfg.inputNorm === 'image' ? 1 : 0,
    '--profile',
    profile ? 1 : 0,
    '--budget-s',
    budgetS,
  ].map(String);
  return runTorchReference<TorchSteps>('vit_step.py', [...a, ...text], env);
}

export async function run(argv: string[]): Promise<void> {
  const shape = arg(argv, 'pretrained-shape', '');
  const models = shape ? [PRETRAINED + shape] : arg(argv, 'models', 'tiny,small').split(',');
  // ViT-B/16-sized steps take tens of seconds each here (docs/performance.md): the defaults for
  // them keep the whole run to minutes.
  const big = models.some((m) => m === 'vit-b16' || m.startsWith(PRETRAINED));
  const backends = arg(argv, 'backends', arg(argv, 'backend', big ? 'wasm' : 'wasm,cpu')).split(',') as BackendChoice[];
  const batch = Number(arg(argv, 'batch', shape ? '8' : '32'));
  const image = Number(arg(argv, 'image', shape ? '224' : '64'));
  const steps = Number(arg(argv, 'steps', big ? '2' : '5'));
  const warmup = Number(arg(argv, 'warmup', big ? '1' : '5'));
  const ceiling = !big || argv.includes('--ceiling');
  const budget = Number(arg(argv, 'torch-budget', big ? '300' : '0'));
  // PyTorch on one CPU thread is the wasm backend's yardstick, not a GPU's: off by default for WebGPU alone.
  const reference = arg(argv, 'reference', backends.every((b) => b.startsWith('webgpu')) ? 'off' : 'on');
  if (!['on', 'off'].includes(reference)) throw new UserError(`--reference must be on or off, got '${reference}'`);
  const onOffAb = (name: string) => {
    const v = arg(argv, name, 'on');
    if (!['on', 'off', 'ab'].includes(v)) throw new UserError(`--${name} must be on, off or ab, got '${v}'`);
    return v;
  };
  const [normGelu, epilogue, softmaxGrad, transpose] = ['norm-gelu', 'epilogue', 'softmax-grad', 'transpose'].map(onOffAb) as [
    string,
    string,
    string,
    string,
  ];
  const choices = (v: string) => (v === 'on' ? [true] : v === 'off' ? [false] : [false, true]);
  const wasmSettings = choices(normGelu).flatMap((n) =>
    choices(epilogue).flatMap((e) =>
      choices(softmaxGrad).flatMap((g) => choices(transpose).map((t) => ({ normGelu: n, epilogue: e, softmaxGrad: g, transpose: t }))),
    ),
  );
  const labelOf = (on: Setting) =>
    [
      normGelu !== 'on' ? `LayerNorm/GELU ${on.normGelu ? 'SIMD' : 'tfjs'}` : '',
      epilogue !== 'on' ? `epilogue ${on.epilogue ? 'on' : 'off'}` : '',
      softmaxGrad !== 'on' ? `softmax grad ${on.softmaxGrad ? 'one pass' : 'tfjs'}` : '',
      transpose !== 'on' ? `transpose ${on.transpose ? 'rows' : 'tfjs'}` : '',
    ]
      .filter(Boolean)
      .join(', ');
  process.stdout.write(
    `training step, batch ${batch} of ${image}x${image}, median of ${steps} steps after ${warmup} warm-up (machine load affects both columns alike)\n`,
  );
  process.stdout.write(
    `${'model'.padEnd(6)} ${'backend'.padEnd(8)} ${'tfjs s/step'.padStart(12)} ${'PyTorch s/step'.padStart(15)} ${'ratio'.padStart(7)} ${'PyTorch THP'.padStart(12)} ${'ratio'.padStart(7)}\n`,
  );
  let heap: string | null = null; // what the backend did with the wasm heap, once it ran
  let heapPeak = 0; // the wasm heap's size after the runs: their high-water mark
  let adapter: string | null = null; // the WebGPU adapter, once it ran
  for (const preset of models) {
    const off = 'PyTorch reference not run (--reference on runs it)';
    const t0 = performance.now();
    const ran =
      reference === 'on' ? torchStepMs(preset, batch, image, steps, warmup, {}, ceiling && backends.includes('wasm'), budget) : off;
    const torchS = (performance.now() - t0) / 1000;
    // A reference stopped at its budget is a reason, with the BLAS it found.
    const ref: TorchSteps | string =
      typeof ran !== 'string' && ran.error
        ? `PyTorch reference ${ran.error} (${steps + warmup} steps asked; its BLAS ${ran.blas}${blasHint(ran.blas)} multiplies at ${ran.gemm_gflops?.toFixed(2)} GFLOP/s)`
        : ran;
    const refThp =
      reference !== 'on'
        ? off
        : big
          ? 'not run for this size (--models tiny,small run it)'
          : torchStepMs(preset, batch, image, steps, warmup, TORCH_THP_ENV);
    let wasmMs: number | null = null; // the step with every switch on, for the ceiling lines
    let wasmCpuMs: number | null = null; // its CPU time
    for (const be of backends) {
      // The cpu backend is ~10x slower; one step of `small` on it takes minutes, so it gets one, after one.
      const [n, w] = be === 'cpu' ? [1, 1] : [steps, warmup];
      const settings = be === 'wasm' ? wasmSettings : [ALL_ON];
      const { wall: all, cpu } = await tfjsStepMs(be, preset, batch, image, n, w, settings);
      if (be === 'wasm') {
        heap ??= /heap [^;)]*/.exec((await initBackend('wasm')).reason)?.[0] ?? 'heap: not reported';
        heapPeak = Math.max(heapPeak, wasmHeapBytes() ?? 0);
      }
      // Which GPU the figures are for (a GPU machine prints its own with the same command).
      if (be.startsWith('webgpu')) adapter ??= (await initBackend(be)).reason.replace(/^requested with --backend [\w-]+: /, '');
      const refMs = typeof ref === 'string' ? null : median(ref.ms);
      const thpMs = typeof refThp === 'string' ? null : median(refThp.ms);
      const cols = (ms: number, r: number | null, w: number) =>
        `${(r === null ? 'n/a' : (r / 1000).toFixed(3)).padStart(w)} ${(r === null ? '' : (ms / r).toFixed(2) + 'x').padStart(7)}`;
      for (const [i, on] of settings.entries()) {
        const ms = median(all[i]!);
        if (be === 'wasm' && Object.values(on).every(Boolean)) [wasmMs, wasmCpuMs] = [ms, median(cpu[i]!)];
        const label = be === 'wasm' && labelOf(on) ? `${be} (${labelOf(on)})` : be;
        process.stdout.write(
          `${preset.padEnd(6)} ${label.padEnd(8)} ${(ms / 1000).toFixed(3).padStart(12)} ${cols(ms, refMs, 15)} ${cols(ms, thpMs, 12)}\n`,
        );
      }
    }
    if (wasmMs !== null && ceiling) {
      const [torchMs, torchMatMulMs] = typeof ref === 'string' ? [null, null] : [median(ref.ms), ref.matmul_ms ?? null];
      process.stdout.write(await wasmCeiling(preset, batch, image, wasmMs, torchMs, torchMatMulMs));
      if (typeof ref !== 'string' && ref.profile_error)
        process.stdout.write(`  PyTorch's profiler failed (${ref.profile_error}); its split is left out\n`);
    }
    if (typeof ref === 'string') process.stdout.write(`  ${ref}\n`);
    else {
      if (wasmCpuMs !== null && ref.cpu_ms?.length) {
        const torchCpu = median(ref.cpu_ms);
        process.stdout.write(
          `  CPU time per step (median; each process's own, which other jobs on the machine inflate less than the wall clock): ` +
            `wasm ${(wasmCpuMs / 1000).toFixed(3)} s, PyTorch ${(torchCpu / 1000).toFixed(3)} s, ${(wasmCpuMs / torchCpu).toFixed(2)}x\n`,
        );
      }
      const ours = initialParams(benchConfig(preset, image), 0).length;
      process.stdout.write(
        `  PyTorch ${ref.torch}, one thread, ${torchS.toFixed(0)} s for its phase, BLAS ${ref.blas}${blasHint(ref.blas)} at ${ref.gemm_gflops?.toFixed(1)} GFLOP/s on a [1024, 768] x [768, 3072] product; parameters: PyTorch ${ref.params}, tfjs ${ours}${ref.params === ours ? ' (same model)' : ' (MISMATCH)'}\n`,
      );
    }
    if (typeof refThp === 'string') process.stdout.write(`  PyTorch THP: ${refThp}\n`);
  }
  process.stdout.write(
    `PyTorch THP: the same reference with ${Object.entries(TORCH_THP_ENV)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')} (its tensors on transparent huge pages); wasm: ${heap ?? 'not run'}${
      heapPeak ? `, grown to ${(heapPeak / 2 ** 20).toFixed(0)} MiB of the ${WASM32_MAX_BYTES / 2 ** 20} MiB a wasm32 memory can reach` : ''
    }\n`,
  );
  if (adapter) process.stdout.write(`webgpu: ${adapter}\n`);
}
