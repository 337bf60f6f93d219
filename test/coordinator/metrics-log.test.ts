import { test } from 'node:test';
import assert from 'node:assert/strict';
import { linesUpTo } from '../../coordinator/train/metrics-log.js';

test('linesUpTo: a resumed run keeps the metrics lines up to its checkpoint, each with its newline', () => {
  const text = ['{"step":1}', '{"step":2}', '{"step":3}', '{"step":4}', ''].join('\n');
  assert.equal(linesUpTo(text, 2), '{"step":1}\n{"step":2}\n');
  assert.equal(linesUpTo(text, 0), '');
});
