import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { checkpointConfig, lossWeights, parseTrainConfig, type RunConfig, type TrainFlags } from '../../model/train-config.js';
import type { ModelConfig } from '../../model/config.js';

const flags: TrainFlags = {
  workers: 2,
  data: 'data/nih64',
  out: 'runs/a',
  model: 'tiny',
  'batch-size': 32,
  seed: 0,
  eval: 'test',
  backend: 'wasm',
  lr: 1e-3,
  'warmup-steps': 20,
  'min-lr-ratio': 0.1,
  'weight-decay': 0.05,
  'clip-norm': 1,
  head: 'text',
  'w-cls': 1,
  'w-con': 0.5,
  'w-prior': 0.1,
  'label-prior': 'graph',
  uncertainty: 'ignore',
  'uncertainty-label': [],
  blank: 'mask',
  'pos-weight': 'none',
  bootstrap: 1000,
};

test('parseTrainConfig: flags become the camelCase config, paths absolute, one epoch by default', () => {
  const c = parseTrainConfig(flags);
  assert.equal(c.data, path.resolve('data/nih64'));
  assert.equal(c.out, path.resolve('runs/a'));
  assert.equal(c.batchSize, 32);
  assert.equal(c.wCon, 0.5);
  assert.deepEqual([c.epochs, c.steps, c.textEmbeddings], [1, null, null]);
  assert.deepEqual([parseTrainConfig({ ...flags, steps: 7 }).epochs, parseTrainConfig({ ...flags, steps: 7 }).steps], [null, 7]);
  assert.equal(parseTrainConfig({ ...flags, 'text-embeddings': 'p.json' }).textEmbeddings, path.resolve('p.json'));
  // Flags the parser does not own (yargs' camelCase copies, job flags) are ignored.
  assert.equal(parseTrainConfig({ ...flags, batchSize: 3, gpu: true } as TrainFlags).batchSize, 32);
});

test('parseTrainConfig: a bad value is one line naming its flag', () => {
  assert.throws(() => parseTrainConfig({ ...flags, workers: 0 }), /^UserError: --workers must be a positive integer, got 0$/);
  assert.throws(() => parseTrainConfig({ ...flags, 'batch-size': 2.5 }), /--batch-size must be a positive integer, got 2.5/);
  assert.throws(() => parseTrainConfig({ ...flags, 'w-prior': -1 }), /--w-prior must be >= 0, got -1/);
  assert.throws(() => parseTrainConfig({ ...flags, epochs: 2, steps: 3 }), /give --epochs or --steps, not both/);
  // yargs makes an array of a scalar flag given twice: the message says so instead of "expected number".
  assert.throws(
    () => parseTrainConfig({ ...flags, lr: [1e-3, 2e-3] } as unknown as TrainFlags),
    /^UserError: --lr was given 2 times \(0\.001, 0\.002\): give it once$/,
  );
  assert.throws(() => parseTrainConfig({ ...flags, head: ['text', 'linear'] } as unknown as TrainFlags), /--head was given 2 times/);
  assert.throws(
    () => parseTrainConfig({ ...flags, 'text-head': 'lstm' } as unknown as TrainFlags),
    /^UserError: --text-head .*got "lstm"$/,
  );
  assert.throws(
    () => parseTrainConfig({ ...flags, 'text-head': 'transformer', 'text-head-layers': 1.5 }),
    /^UserError: --text-head-layers must be a positive integer, got 1\.5$/,
  );
  assert.deepEqual([parseTrainConfig(flags).textHead, parseTrainConfig(flags).textHeadLayers], ['mlp', 1]);
});

test('lossWeights: the contrastive and prior terms need the text head', () => {
  assert.deepEqual(lossWeights(parseTrainConfig(flags)), { classification: 1, contrastive: 0.5, labelPrior: 0.1 });
  assert.deepEqual(lossWeights(parseTrainConfig({ ...flags, head: 'linear' })), { classification: 1, contrastive: 0, labelPrior: 0 });
});

test('checkpointConfig: the fields a resumed run, eval and export read, in their on-disk names', () => {
  const model = { preset: 'tiny', head: 'text', labels: ['A', 'B'] } as unknown as ModelConfig;
  const run = { ...parseTrainConfig(flags), resolved: { model, labelSet: 'nih' } } as unknown as RunConfig;
  assert.deepEqual(checkpointConfig(run, null, 900), {
    model,
    fixedPrompts: null,
    labelSet: 'nih',
    labels: ['A', 'B'],
    seed: 0,
    globalBatch: 32,
    trainRows: 900,
  });
});
