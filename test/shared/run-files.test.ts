import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evalEpochFile, isEvalFile } from '../../shared/run/files.js';

test('run files: the final and per-epoch evaluations are told apart from everything else', () => {
  assert.equal(evalEpochFile(3), 'eval-epoch-3.json');
  for (const f of ['eval.json', evalEpochFile(0), evalEpochFile(12)]) assert.ok(isEvalFile(f), f);
  for (const f of ['eval.jsonl', 'eval-epoch-x.json', 'my-eval.json', 'metrics.jsonl', 'config.json']) assert.ok(!isEvalFile(f), f);
});
