import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { runSynth } from '../coordinator/data/synth-run.js';
import { openDataset } from '../shared/dataset/reader.js';
import type { SampleBatch } from '../shared/dataset/columns.js';
import { Prng } from '../shared/random/generators.js';
import { UserError } from '../shared/util/errors.js';
import { runTorchReference } from './torch-reference.js';

/**
 * `npm run bench -- synth [--count 3000] [--epochs 3]`: how fast `data synth` is, and whether its
 * signs are learnable: a probe model (8x8 patch embedding, one hidden layer per patch, a
 * position-aware linear head; no attention, wasm backend) is trained on train with masked BCE
 * (only 1/0 labels count) and scored by per-label AUROC on test. The tiny ViT of the trainer must
 * reach mean test AUROC >= 0.95 after 3 epochs; this probe is the reference that the data allows it.
 *
 * `--replica JSON` also trains bench/reference/tiny_replica.py (PyTorch, python3-torch) on the same
 * splits with the JSON's overrides (`'{}'`: the tiny preset's configuration), about 25 s per
 * 3-epoch run: the fast loop for ablations of the preset (docs/results.md, run G).
 */
export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { count: { type: 'string', default: '3000' }, epochs: { type: 'string', default: '3' }, replica: { type: 'string' } },
  });
  const count = Number(values.count);
  const epochs = Number(values.epochs);
  const replicaOverrides = values.replica !== undefined ? parseReplica(values.replica) : null;
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-bench-synth-'));
  try {
    const out = path.join(dir, 'ds');
    const t0 = performance.now();
    await runSynth(out, false, { count, imageSize: 64, seed: 0, fractions: { val: 0.1, test: 0.2 } });
    const s = (performance.now() - t0) / 1000;
    process.stdout.write(
      `data synth: ${count} images of 64x64 in ${s.toFixed(2)} s (${(count / s).toFixed(0)} images/s, Arrow shards and sha256 included)\n`,
    );
    await tf.setBackend('wasm');
    await tf.ready();
    const ds = await openDataset(out);
    const all = async (split: 'train' | 'test') => {
      const r = ds.split(split);
      return r.read(Array.from({ length: r.length }, (_, i) => i));
    };
    const tr = await all('train');
    const te = await all('test');
    await ds.close();
    if (values.replica !== undefined) replica(path.join(dir, 'split'), tr, te, ds.labelNames, values.replica, replicaOverrides!);
    const aucs = probe(tr, te, ds.labelNames.length, epochs);
    const defined = aucs.filter((a) => !Number.isNaN(a));
    ds.labelNames.forEach((l, k) => process.stdout.write(`  ${l.padEnd(28)} ${aucs[k]!.toFixed(3)}\n`));
    process.stdout.write(
      `probe (patch MLP, ${epochs} epochs, ${tr.n} train / ${te.n} test): mean test AUROC ${(defined.reduce((a, b) => a + b, 0) / defined.length).toFixed(4)} (reference: the trainer's tiny ViT needs >= 0.95)\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function probe(tr: SampleBatch, te: SampleBatch, L: number, epochs: number): number[] {
  const S = tr.height;
  const P = 8;
  const NP = (S / P) ** 2;
  const D = 96;
  const rng = new Prng(0);
  const v = (shape: number[], sc: number) =>
    tf.variable(
      tf.tensor(
        Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => sc * rng.normal()),
        shape,
      ),
    );
  const W1 = v([P * P, D], Math.sqrt(2 / (P * P)));
  const b1 = tf.variable(tf.zeros([D]));
  const W2 = v([D, D], Math.sqrt(2 / D));
  const b2 = tf.variable(tf.zeros([D]));
  const pos = v([NP, D], 0.02);
  const W3 = v([NP * D, L], Math.sqrt(1 / (NP * D)));
  const b3 = tf.variable(tf.zeros([L]));
  const apply = (x: tf.Tensor3D): tf.Tensor2D =>
    tf.tidy(() => {
      const B = x.shape[0];
      const p = x
        .reshape([B, S / P, P, S / P, P])
        .transpose([0, 1, 3, 2, 4])
        .reshape([B * NP, P * P]);
      let h = tf.relu(p.matMul(W1).add(b1));
      h = h
        .reshape([B, NP, D])
        .add(pos)
        .reshape([B * NP, D]);
      h = tf.relu(h.matMul(W2).add(b2));
      return h
        .reshape([B, NP * D])
        .matMul(W3)
        .add(b3) as tf.Tensor2D;
    });
  const toX = (b: SampleBatch) =>
    tf.tensor3d(
      Float32Array.from(b.images, (p) => p / 255 - 0.5),
      [b.n, S, S],
    );
  const X = toX(tr);
  const Y = tf.tensor2d(
    Float32Array.from(tr.labels, (l) => (l === 1 ? 1 : 0)),
    [tr.n, L],
  );
  const M = tf.tensor2d(
    Float32Array.from(tr.labels, (l) => (l === 0 || l === 1 ? 1 : 0)),
    [tr.n, L],
  );
  const opt = tf.train.adam(2e-3);
  const B = 32;
  for (let e = 0; e < epochs; e++) {
    const perm = rng.shuffle(Array.from({ length: tr.n }, (_, i) => i));
    for (let s = 0; s + B <= tr.n; s += B) {
      const idx = tf.tensor1d(Int32Array.from(perm.slice(s, s + B)), 'int32');
      opt.minimize(
        () => tf.losses.sigmoidCrossEntropy(tf.gather(Y, idx), apply(tf.gather(X, idx) as tf.Tensor3D), tf.gather(M, idx)) as tf.Scalar,
      );
      idx.dispose();
    }
  }
  const scores = apply(toX(te)).dataSync();
  return Array.from({ length: L }, (_, k) => {
    const pos: number[] = [];
    const neg: number[] = [];
    for (let i = 0; i < te.n; i++) {
      const l = te.labels[i * L + k];
      if (l === 1) pos.push(scores[i * L + k]!);
      else if (l === 0) neg.push(scores[i * L + k]!);
    }
    if (!pos.length || !neg.length) return NaN;
    let w = 0;
    for (const p of pos) for (const n of neg) w += p > n ? 1 : p === n ? 0.5 : 0;
    return w / (pos.length * neg.length);
  });
}

/** The --replica overrides, checked before any data is generated. */
function parseReplica(overrides: string): object {
  let extra: unknown;
  try {
    extra = JSON.parse(overrides);
  } catch (e) {
    throw new UserError(`--replica '${overrides}' is not JSON (${(e as Error).message}); pass an object of overrides, e.g. '{"seed":1}'`);
  }
  if (typeof extra !== 'object' || extra === null || Array.isArray(extra))
    throw new UserError(`--replica '${overrides}' is not a JSON object; pass an object of overrides, e.g. '{"seed":1}'`);
  return extra;
}

/** Train the PyTorch replica of the tiny preset on the same splits and print its per-label AUROC. */
function replica(prefix: string, tr: SampleBatch, te: SampleBatch, labelNames: readonly string[], overrides: string, extra: object): void {
  for (const [name, b] of [
    ['train', tr],
    ['test', te],
  ] as const) {
    writeFileSync(`${prefix}.${name}.img`, b.images);
    writeFileSync(`${prefix}.${name}.lab`, new Uint8Array(b.labels.buffer, b.labels.byteOffset, b.labels.byteLength));
  }
  const cfg = JSON.stringify({ ...extra, data: prefix, size: tr.height, labels: labelNames.length });
  const out = runTorchReference<{ mean: number; secs: number; auroc: (number | null)[]; train_auroc: (number | null)[] }>(
    'tiny_replica.py',
    [cfg],
  );
  if (typeof out === 'string') {
    process.stdout.write(`${out}\n`);
    return;
  }
  labelNames.forEach((l, k) =>
    process.stdout.write(`  ${l.padEnd(28)} ${out.auroc[k]?.toFixed(3) ?? 'null'}  (train ${out.train_auroc[k]?.toFixed(3) ?? 'null'})\n`),
  );
  process.stdout.write(`PyTorch replica of the tiny preset (${overrides}): mean test AUROC ${out.mean.toFixed(4)} in ${out.secs} s\n`);
}
