import { type TestContext, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed } from '../../coordinator/train/train-job.js';
import { loadParams } from '../../model/params-file.js';
import { textTowerSpecs, textTowerTailSpecs } from '../../model/text/tower.js';
import { readTextTowerParams } from '../../model/text/pretrained.js';
import { openStateDict } from '../../shared/interop/state-dict.js';
import { createLogger } from '../../shared/util/log.js';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { addPretrainedText } from '../helpers/pretrained-text.js';
import { torchReference } from '../helpers/torch.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const run = promisify(execFile);
const opts = { log: createLogger('test', 'warn'), progress: false, workerOutput: () => {} };

function args(data: string, out: string, pretrained: string, workers: number, c: Case): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers,
    data,
    out,
    steps: 20,
    'batch-size': 8,
    seed: 4,
    eval: 'none',
    backend: 'wasm',
    lr: 1e-3,
    'warmup-steps': 2,
    uncertainty: 'ignore',
    'pos-weight': 'none',
    gpu: false,
    prefetch: 2,
    'params-check-every': 1,
    report: false,
    'checkpoint-every': 0,
    'checkpoint-every-minutes': 0,
    'keep-checkpoints': 3,
    pretrained,
    'text-tower': c.mode,
    'text-head': c.head,
  } as TrainArgs;
}

interface Case {
  mode: 'frozen' | 'finetune';
  head: 'mlp' | 'none' | 'transformer';
}

/** Trains `c` on DIR with 1 and 2 workers and checks the two give the same weights (1e-5 relative of the largest). */
async function workerCountsAgree(t: TestContext, dir: string, pre: string, data: string, kind: 'clip' | 'bert', c: Case) {
  const what = `${c.mode}, --text-head ${c.head}`;
  const runs = [];
  for (const workers of [1, 2]) {
    const out = path.join(dir, `${c.mode}-${c.head}-${workers}`);
    await trainDistributed(parseTrainConfig(args(data, out, pre, workers, c)), opts);
    runs.push(await loadParams(out));
  }
  const [a, b] = runs as [Awaited<ReturnType<typeof loadParams>>, Awaited<ReturnType<typeof loadParams>>];
  const cfg = a.doc.config;
  assert.equal(cfg.text.kind, c.mode === 'frozen' ? 'frozen' : 'tower');
  const tower = cfg.text.kind === 'frozen' || cfg.text.kind === 'tower' ? cfg.text.tower : null;
  assert.equal(tower?.kind, kind);
  const towerNames = textTowerSpecs(tower!).map((s) => s.name);
  const inLayout = a.layout.entries.filter((e) => towerNames.includes(e.name));
  // frozen: the prompts are fixed vectors stored with the model (under the transformer head, the
  // tower's last hidden states, and its readout frozen in the model); finetune: the tower is trained.
  if (c.mode === 'frozen' && c.head === 'transformer') {
    const tail = textTowerTailSpecs(tower!);
    assert.deepEqual(
      inLayout.map((e) => e.name),
      tail.map((s) => s.name),
    );
    const T = cfg.text.kind === 'frozen' ? cfg.text.tokens![0]!.length : 0;
    assert.equal(a.doc.fixedPrompts?.length, 42 * T * tower!.width);
    const sd = await openStateDict(path.join(pre, 'open_clip_pytorch_model.bin'));
    const file = await readTextTowerParams(tower!, sd);
    await sd.close();
    for (const e of inLayout) assert.deepEqual(a.params.subarray(e.offset, e.offset + e.size), file.get(e.name), `${e.name} stays frozen`);
  } else if (c.mode === 'frozen') {
    assert.equal(inLayout.length, 0);
    assert.equal(a.doc.fixedPrompts?.length, 42 * 16);
  } else assert.equal(inLayout.length, towerNames.length);
  assert.equal(
    a.layout.entries.some((e) => e.name.startsWith('text.head.resblocks.')),
    c.head === 'transformer',
  );
  if (c.mode === 'frozen') {
    // Export writes the frozen tower as the pretrained file holds it: an open_clip model again.
    const st = path.join(dir, `${c.mode}-${c.head}.safetensors`);
    await run(process.execPath, [coordinatorEntry, 'export', '--checkpoint', path.join(dir, `${c.mode}-${c.head}-1`), '--out', st]);
    const [got, want] = await Promise.all([openStateDict(st), openStateDict(path.join(pre, 'open_clip_pytorch_model.bin'))]);
    for (const name of towerNames) {
      assert.deepEqual(got.tensors.get(name)?.shape, want.tensors.get(name)!.shape, name);
      assert.deepEqual(await got.readF32(name), await want.readF32(name), `${name} bit for bit`);
    }
    assert.ok(got.tensors.has('visual.proj') || got.tensors.has('visual.head.proj.weight'), 'the image tower too');
    await Promise.all([got.close(), want.close()]);
  }
  const maxA = a.params.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  let maxDiff = 0;
  for (let i = 0; i < a.params.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a.params[i]! - b.params[i]!));
  t.diagnostic(`${what}: max |1 worker - 2 workers| ${maxDiff.toExponential(2)} of max |parameter| ${maxA.toFixed(3)}`);
  assert.ok(maxDiff <= 1e-5 * maxA, `${what}: ${maxDiff} vs ${maxA}`);
}

for (const [kind, variant, cases] of [
  [
    'clip',
    'openai',
    [
      { mode: 'frozen', head: 'mlp' },
      { mode: 'finetune', head: 'mlp' },
      { mode: 'frozen', head: 'transformer' },
    ],
  ],
  [
    'bert',
    'biomedclip',
    [
      { mode: 'frozen', head: 'mlp' },
      { mode: 'finetune', head: 'mlp' },
      { mode: 'finetune', head: 'transformer' },
    ],
  ],
] as const)
  test(`--pretrained DIR with its ${kind === 'clip' ? 'CLIP' : 'BERT'} text tower: 20 steps ${cases.map((c) => `${c.mode} (--text-head ${c.head})`).join(', ')}, 1 and 2 workers give the same weights (1e-5 relative)`, async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'cxr-text-tower-'));
    try {
      // The real layout: open_clip_config.json, a torch.save .bin with both towers, tokenizer files.
      const pre = path.join(dir, variant);
      const vision = torchReference('pretrained_vision.py', [pre, variant]);
      if ('skip' in vision) return t.skip(vision.skip);
      const text = addPretrainedText(pre, kind === 'clip' ? 'clip' : 'biomedclip');
      if ('skip' in text) return t.skip(text.skip);
      const data = path.join(dir, 'data');
      await runSynth(data, false, { count: 60, imageSize: 32, seed: 3, fractions: { val: 0.1, test: 0.2 } });
      for (const c of cases) await workerCountsAgree(t, dir, pre, data, kind, c);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
