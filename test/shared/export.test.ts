import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildLayout, type ParamLayout } from '../../shared/params.js';
import { coordinatorEntry, packageRoot } from '../../shared/util/paths.js';
import { SafetensorsFile, writeSafetensors } from '../../shared/interop/safetensors.js';
import { UserError } from '../../shared/util/errors.js';
import { loadInitWeights, openClipShape, openClipTensors } from '../../shared/interop/open-clip.js';
import { CheckpointWriter, checkpointsDir, commitCheckpoint, layoutHash, stepDir } from '../../shared/checkpoint/index.js';

/** A tiny open_clip-style image tower (TF layouts) plus non-visual parameters. */
function vitLayout(width = 16, patch = 4, grid = 4, layers = 2, dim = 8): ParamLayout {
  const specs: { name: string; shape: number[]; decay: boolean }[] = [
    { name: 'visual.conv1.weight', shape: [patch, patch, 1, width], decay: true },
    { name: 'visual.class_embedding', shape: [width], decay: false },
    { name: 'visual.positional_embedding', shape: [grid * grid + 1, width], decay: false },
    { name: 'visual.ln_pre.weight', shape: [width], decay: false },
    { name: 'visual.ln_pre.bias', shape: [width], decay: false },
  ];
  for (let i = 0; i < layers; i++) {
    const p = `visual.transformer.resblocks.${i}`;
    specs.push(
      { name: `${p}.ln_1.weight`, shape: [width], decay: false },
      { name: `${p}.ln_1.bias`, shape: [width], decay: false },
      { name: `${p}.attn.in_proj_weight`, shape: [width, 3 * width], decay: true },
      { name: `${p}.attn.in_proj_bias`, shape: [3 * width], decay: false },
      { name: `${p}.attn.out_proj.weight`, shape: [width, width], decay: true },
      { name: `${p}.attn.out_proj.bias`, shape: [width], decay: false },
      { name: `${p}.ln_2.weight`, shape: [width], decay: false },
      { name: `${p}.ln_2.bias`, shape: [width], decay: false },
      { name: `${p}.mlp.c_fc.weight`, shape: [width, 4 * width], decay: true },
      { name: `${p}.mlp.c_fc.bias`, shape: [4 * width], decay: false },
      { name: `${p}.mlp.c_proj.weight`, shape: [4 * width, width], decay: true },
      { name: `${p}.mlp.c_proj.bias`, shape: [width], decay: false },
    );
  }
  specs.push(
    { name: 'visual.ln_post.weight', shape: [width], decay: false },
    { name: 'visual.ln_post.bias', shape: [width], decay: false },
    { name: 'visual.proj', shape: [width, dim], decay: true },
    { name: 'label_embeddings', shape: [14, dim], decay: false },
    { name: 'logit_scale', shape: [], decay: false },
  );
  return buildLayout(specs);
}

function randomParams(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = (x / 2 ** 32 - 0.5) * 2 ** ((x % 13) - 6);
  }
  return out;
}

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

test('open_clip layouts: dense kernels transposed, gray conv1 as an RGB kernel summing to it, the rest unchanged', async () => {
  const layout = vitLayout();
  const params = randomParams(layout.total);
  const tensors = new Map(openClipTensors(layout, params).map((t) => [t.name, t]));
  const get = (n: string) => {
    const t = tensors.get(n)!;
    return { shape: t.shape, data: typeof t.data === 'function' ? t.data() : t.data };
  };
  const entry = (n: string) => layout.entries.find((e) => e.name === n)!;
  assert.deepEqual(get('visual.conv1.weight').shape, [16, 3, 4, 4]);
  assert.deepEqual(get('visual.transformer.resblocks.1.attn.in_proj_weight').shape, [48, 16]);
  assert.deepEqual(get('visual.transformer.resblocks.0.mlp.c_proj.weight').shape, [16, 64]);
  assert.deepEqual(get('visual.proj').shape, [16, 8]);
  assert.deepEqual(get('logit_scale').shape, []);
  // in_proj: TF [in=16, out=48] element (r, c) is torch (c, r).
  const ip = entry('visual.transformer.resblocks.1.attn.in_proj_weight');
  assert.equal(get(ip.name).data[40 * 16 + 3], params[ip.offset + 3 * 48 + 40]);
  // conv1: TF [i, j, 0, o] = sum over c of torch [o, c, i, j], channels equal up to rounding.
  const cv = entry('visual.conv1.weight');
  const w = get(cv.name).data;
  for (const [i, j, o] of [
    [0, 0, 0],
    [3, 1, 15],
    [2, 3, 7],
  ] as const) {
    const gray = params[cv.offset + (i * 4 + j) * 16 + o]!;
    const ch = [0, 1, 2].map((c) => w[((o * 3 + c) * 4 + i) * 4 + j]!);
    assert.equal(Math.fround(Math.fround(ch[0]! + ch[1]!) + ch[2]!), gray);
    assert.ok(Math.abs(ch[2]! - gray / 3) <= Math.abs(gray) * 1e-6);
  }
  assert.ok(bits(get('visual.proj').data).equals(bits(params.subarray(entry('visual.proj').offset, entry('visual.proj').offset + 128))));
  assert.deepEqual(openClipShape(entry('label_embeddings')), [14, 8]);
});

test('export -> --init-weights gives back the same bits; mismatches name the tensor', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cxr-export-'));
  try {
    const layout = vitLayout();
    const params = randomParams(layout.total);
    const file = path.join(dir, 'm.safetensors');
    await writeSafetensors(file, openClipTensors(layout, params));
    const back = await loadInitWeights(file, layout, new Float32Array(layout.total));
    assert.ok(bits(back.params).equals(bits(params)));
    assert.equal(back.loaded.length, layout.entries.length);
    assert.deepEqual([back.missing, back.unused], [[], []]);

    // A visual-only file with an extra text tower: the rest keeps its initialisation.
    const visual = openClipTensors(layout, params).filter((t) => t.name.startsWith('visual.'));
    const partial = path.join(dir, 'visual.safetensors');
    await writeSafetensors(partial, [...visual, { name: 'token_embedding.weight', shape: [3, 2], data: new Float32Array(6) }]);
    const init = randomParams(layout.total, 99);
    const got = await loadInitWeights(partial, layout, init);
    assert.deepEqual(got.missing, ['label_embeddings', 'logit_scale']);
    assert.deepEqual(got.unused, ['token_embedding.weight']);
    const le = layout.entries.find((e) => e.name === 'label_embeddings')!;
    assert.ok(bits(got.params.subarray(le.offset, le.offset + le.size)).equals(bits(init.subarray(le.offset, le.offset + le.size))));

    // A wider model's weights into this preset: the first mismatching tensor is named.
    const wide = vitLayout(32);
    const wideFile = path.join(dir, 'wide.safetensors');
    await writeSafetensors(wideFile, openClipTensors(wide, randomParams(wide.total)));
    await assert.rejects(
      loadInitWeights(wideFile, layout, init),
      (e: Error) =>
        e instanceof UserError && /tensor 'visual.conv1.weight' has shape \[32,3,4,4\], this model needs \[16,3,4,4\]/.test(e.message),
    );
    const other = path.join(dir, 'other.safetensors');
    await writeSafetensors(other, [{ name: 'fc.weight', shape: [2], data: new Float32Array(2) }]);
    await assert.rejects(loadInitWeights(other, layout, init), /none of its 1 tensors is a parameter of this model/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('coordinator export (a real process) writes the latest committed checkpoint of a run; torch loads it when installed', async (t) => {
  const run = mkdtempSync(path.join(os.tmpdir(), 'cxr-export-run-'));
  try {
    const layout = vitLayout();
    const params = randomParams(layout.total, 5);
    const dir = stepDir(checkpointsDir(run), 12);
    const w = new CheckpointWriter({ inline: true });
    const rep = await w.save(dir, {
      rank: 0,
      world: 1,
      step: 12,
      layoutHash: layoutHash(layout),
      start: 0,
      end: layout.total,
      params,
      m: params,
      v: params,
    });
    await commitCheckpoint(dir, {
      step: 12,
      epoch: 1,
      sampler: null,
      rng: null,
      config: { model: 'tiny' },
      layout,
      world: 1,
      shards: [rep],
    });
    const out = path.join(run, 'model.safetensors');
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [coordinatorEntry, 'export', ...args], {
        encoding: 'utf8',
        env: { ...process.env, CXR_LOG_LEVEL: 'warn' },
      });
    const ok = cli('--checkpoint', run, '--out', out);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /exported step 12: 34 tensors/);
    const st = await SafetensorsFile.open(out);
    try {
      assert.equal(st.metadata['cxr_align.step'], '12');
      assert.deepEqual(st.info('visual.transformer.resblocks.0.mlp.c_fc.weight').shape, [64, 16]);
    } finally {
      await st.close();
    }
    const again = cli('--checkpoint', run, '--out', out);
    assert.equal(again.status, 2);
    assert.match(again.stderr, /exists; pass --force to replace it/);
    const bad = cli('--checkpoint', path.join(run, 'nope'), '--out', path.join(run, 'x.safetensors'));
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /coordinator: error: checkpoint path .*nope does not exist/);
    assert.equal(existsSync(path.join(run, 'x.safetensors')), false);

    // `coordinator checkpoints`: lists, verifies, and flags a damaged shard.
    mkdirSync(stepDir(checkpointsDir(run), 20));
    const ls = spawnSync(process.execPath, [coordinatorEntry, 'checkpoints', '--run', run, '--verify'], { encoding: 'utf8' });
    assert.equal(ls.status, 0, ls.stderr);
    assert.match(ls.stdout, /^12 +verified +1 +1 /m);
    assert.match(ls.stdout, /^20 +uncommitted/m);
    const fd = openSync(rep.path, 'r+');
    writeSync(fd, Buffer.from([1, 2, 3]), 0, 3, 200);
    closeSync(fd);
    const bad2 = spawnSync(process.execPath, [coordinatorEntry, 'checkpoints', '--run', run, '--verify'], { encoding: 'utf8' });
    assert.equal(bad2.status, 2);
    assert.match(bad2.stdout, /^12 +CORRUPT .*checksum mismatch in params block 0/m);
    assert.match(bad2.stderr, /1 committed checkpoint\(s\) under .* are corrupt/);

    const py = ['/usr/bin/python3', 'python3'].find(
      (p) =>
        spawnSync(p, ['-c', 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'], { stdio: 'ignore' })
          .status === 0,
    );
    if (!py) {
      t.skip('PyTorch check skipped: no python3 with torch (apt-get install -y python3-torch)');
      return;
    }
    const check = spawnSync(py, [path.join(packageRoot, 'bench', 'open_clip_check.py'), out, '--heads', '2'], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const report = JSON.parse(check.stdout.trim().split('\n').pop()!);
    t.diagnostic(`torch: ${report.impl}, conv1 gray vs rgb ${report.conv1_gray_vs_rgb_max_rel_diff}`);
    assert.equal(report.ok, true);
    assert.equal(report.tensors, 32);
  } finally {
    rmSync(run, { recursive: true, force: true });
  }
});
