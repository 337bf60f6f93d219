import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { MetricsLog, linesUpTo } from '../../coordinator/train/metrics-log.js';
import type { MetricsRecord } from '../../shared/run/files.js';
import { UserError } from '../../shared/util/errors.js';

test('linesUpTo: a resumed run keeps the metrics lines up to its checkpoint, each with its newline', () => {
  const text = ['{"step":1}', '{"step":2}', '{"step":3}', '{"step":4}', ''].join('\n');
  assert.equal(linesUpTo(text, 2), '{"step":1}\n{"step":2}\n');
  assert.equal(linesUpTo(text, 0), '');
});

test('linesUpTo: a torn last line (a run killed mid-write) is dropped; a bad line before it names file and line', () => {
  assert.equal(linesUpTo('{"step":1}\n{"step":2}\n{"st', 5), '{"step":1}\n{"step":2}\n');
  assert.throws(
    () => linesUpTo('{"step":1}\n{"st\n{"step":3}\n', 5, 'runs/a/metrics.jsonl'),
    (e: Error) => {
      assert.ok(e instanceof UserError);
      assert.match(e.message, /^runs\/a\/metrics\.jsonl:2: not valid JSON .*remove or fix that line, then resume$/);
      return true;
    },
  );
  assert.throws(() => linesUpTo('{"step":1}\n{"loss":2}\n', 5, 'm.jsonl'), /^UserError: m\.jsonl:2: no numeric 'step'/);
});

test('MetricsLog.open on a resumed run with a torn last line keeps the whole lines up to the checkpoint', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-metrics-'));
  writeFileSync(path.join(dir, 'metrics.jsonl'), '{"step":1}\n{"step":2}\n{"step":3}\n{"step":4,"lo');
  const log = await MetricsLog.open(dir, 3);
  log.append({ step: 4 } as MetricsRecord);
  await log.flushed();
  await log.close();
  assert.equal(readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8'), '{"step":1}\n{"step":2}\n{"step":3}\n{"step":4}\n');
});

test('MetricsLog on a full disk: one error naming metrics.jsonl and saying the checkpoints are intact', async (t) => {
  const mnt = mkdtempSync(path.join(tmpdir(), 'cxr-full-'));
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]);
  if (m.status !== 0) return t.skip(`cannot mount a tmpfs here (${m.stderr.toString().trim()}): needs root`);
  try {
    const log = await MetricsLog.open(mnt, 0);
    const filler = openSync(path.join(mnt, 'filler'), 'w');
    try {
      for (;;) writeSync(filler, Buffer.alloc(4096, 1));
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
    } finally {
      closeSync(filler);
    }
    log.append({ step: 7 } as MetricsRecord);
    await assert.rejects(log.flushed(), (e: Error) => {
      assert.ok(e instanceof UserError);
      assert.match(
        e.message,
        /metrics\.jsonl: no space left on device \(ENOSPC\); the lines before step 7 and the committed checkpoints are intact/,
      );
      return true;
    });
    await log.close();
  } finally {
    spawnSync('umount', [mnt]);
  }
});
