import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseJsonl } from '../../shared/run/jsonl.js';
import { UserError } from '../../shared/util/errors.js';

test('parseJsonl: blank lines skipped, a torn last line left out by number, an unterminated whole one kept', () => {
  assert.deepEqual(parseJsonl('{"a":1}\n\n{"a":2}\n', 'f'), {
    lines: [
      { text: '{"a":1}', n: 1, doc: { a: 1 } },
      { text: '{"a":2}', n: 3, doc: { a: 2 } },
    ],
    torn: null,
  });
  assert.deepEqual(parseJsonl('{"a":1}\n{"a"', 'f'), { lines: [{ text: '{"a":1}', n: 1, doc: { a: 1 } }], torn: 2 });
  assert.deepEqual(parseJsonl('{"a":1}', 'f').lines.length, 1);
});

test('parseJsonl: a bad line before the last names file and line, with the hint', () => {
  assert.throws(
    () => parseJsonl('{"a"\n{"a":1}\n', 'run/m.jsonl', 'fix it'),
    (e: Error) => {
      assert.ok(e instanceof UserError);
      assert.match(e.message, /^run\/m\.jsonl:1: not valid JSON \(.*\); fix it$/);
      return true;
    },
  );
  assert.throws(() => parseJsonl('{"a"\n', 'm.jsonl'), /^UserError: m\.jsonl:1: not valid JSON \([^;]*\)$/);
});
