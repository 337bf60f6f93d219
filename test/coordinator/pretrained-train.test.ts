import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { runSynth } from '../../coordinator/data/synth-run.js';
import type { TrainArgs } from '../../coordinator/commands/train.js';
import { parseTrainConfig } from '../../model/train-config.js';
import { trainDistributed, type TrainJobOptions } from '../../coordinator/train/train-job.js';
import { loadPretrainedModel } from '../../model/pretrained/model.js';
import { loadParams } from '../../model/params-file.js';
import { checkpointsDir, stepDir } from '../../shared/checkpoint/index.js';
import { SafetensorsFile } from '../../shared/interop/safetensors.js';
import { sha256File } from '../../shared/interop/state-dict.js';
import { createLogger } from '../../shared/util/log.js';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { torchReference } from '../helpers/torch.js';
import { SMALL_RUN_FLAGS } from '../helpers/small-run.js';

const run = promisify(execFile);
const opts = (checkpoints: TrainJobOptions['checkpoints']): TrainJobOptions => ({
  log: createLogger('test', 'warn'),
  progress: false,
  workerOutput: () => {},
  checkpoints,
});

function args(data: string, out: string, pretrained: string, steps: number, lr = 1e-3): TrainArgs {
  return {
    ...SMALL_RUN_FLAGS,
    workers: 1,
    data,
    out,
    steps,
    'batch-size': 8,
    seed: 2,
    eval: 'none',
    backend: 'wasm',
    lr,
    'warmup-steps': 1,
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
  } as TrainArgs;
}

test('--pretrained DIR: a run starts from the imported tower, records the weights (file, sha256), resumes bit for bit; embed and export take DIR', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-pretrain-'));
  try {
    const pre = path.join(dir, 'openai');
    const ref = torchReference('pretrained_vision.py', [pre, 'openai']);
    if ('skip' in ref) return t.skip(ref.skip);
    const data = path.join(dir, 'data');
    await runSynth(data, false, { count: 60, imageSize: 32, seed: 3, fractions: { val: 0.1, test: 0.2 } });
    const weights = path.join(pre, 'open_clip_pytorch_model.bin');

    // lr 0: one step leaves the parameters as imported, so model.bin's image tower is DIR's.
    const still = path.join(dir, 'still');
    await trainDistributed(parseTrainConfig(args(data, still, pre, 1, 0)), opts({}));
    const saved = await loadParams(still);
    assert.deepEqual(saved.doc.config.pretrained, { dir: pre, weights, sha256: await sha256File(weights), tower: 'open-clip-vit' });
    assert.equal(saved.doc.config.act, 'quick_gelu');
    const imported = await loadPretrainedModel(pre, { labels: saved.doc.config.labels });
    for (const e of saved.layout.entries.filter((x) => x.name.startsWith('visual.')))
      assert.deepEqual(saved.params.subarray(e.offset, e.offset + e.size), imported.params.subarray(e.offset, e.offset + e.size), e.name);

    const straight = path.join(dir, 'straight');
    const s = await trainDistributed(parseTrainConfig(args(data, straight, pre, 4)), opts({ checkpointEvery: 2, keepCheckpoints: 5 }));
    const resumed = path.join(dir, 'resumed');
    const r = await trainDistributed(parseTrainConfig(args(data, resumed, pre, 4)), opts({ resume: stepDir(checkpointsDir(straight), 2) }));
    assert.equal(r.startStep, 2);
    assert.equal(r.paramsHash, s.paramsHash, 'bit-identical parameters after the resumed run');
    const config = JSON.parse(await readFile(path.join(straight, 'config.json'), 'utf8'));
    assert.equal(config.resolved.model.pretrained.sha256, saved.doc.config.pretrained!.sha256);

    // export writes the run's image tower under open_clip names, the stem unfolded to CLIP's preprocessing.
    const st = path.join(dir, 'run.safetensors');
    await run(process.execPath, [coordinatorEntry, 'export', '--checkpoint', straight, '--out', st]);
    const f = await SafetensorsFile.open(st);
    assert.deepEqual(f.tensors.get('visual.conv1.weight')!.shape, [64, 3, 8, 8]);
    assert.match(f.metadata['cxr_align.conv1']!, /mean \[0\.48145466,0\.4578275,0\.40821073\]/);
    await f.close();
    const fromDir = path.join(dir, 'dir.safetensors');
    const { stdout } = await run(process.execPath, [coordinatorEntry, 'export', '--pretrained', pre, '--out', fromDir]);
    assert.match(stdout, /exported the image tower of .*: 33 tensors/);

    const arrow = path.join(dir, 'test.arrow');
    const e = await run(process.execPath, [
      coordinatorEntry,
      'embed',
      '--pretrained',
      pre,
      '--data',
      data,
      '--out',
      arrow,
      '--backend',
      'cpu',
    ]);
    assert.match(e.stdout, /test: 12 embeddings of dimension 16/);
    await assert.rejects(
      run(process.execPath, [coordinatorEntry, 'embed', '--data', data, '--out', arrow]),
      /give --checkpoint RUN \(a trained model\) or --pretrained DIR/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
