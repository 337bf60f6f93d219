import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { RateWindow, createProgress, formatDuration } from '../../shared/util/progress.js';

class Capture extends Writable {
  text = '';
  constructor(readonly isTTY: boolean) {
    super();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
  // cli-progress asks a TTY stream to move the cursor.
  cursorTo(): boolean {
    return true;
  }
  clearLine(): boolean {
    return true;
  }
  moveCursor(): boolean {
    return true;
  }
  get columns(): number {
    return 120;
  }
}

test('durations read like a person writes them', () => {
  assert.equal(formatDuration(5), '5s');
  assert.equal(formatDuration(185), '3m05s');
  assert.equal(formatDuration(3720), '1h02m');
  assert.equal(formatDuration(2 * 86400 + 3 * 3600), '2d03h');
  assert.equal(formatDuration(NaN), '?');
});

test('the rate follows the recent window, so the ETA adapts when the loop speeds up', () => {
  const w = new RateWindow(10_000);
  w.add(0, 0);
  w.add(10_000, 10); // 1/s while warming up
  for (let t = 11_000; t <= 30_000; t += 1000) w.add(t, 10 + ((t - 10_000) / 1000) * 5); // then 5/s
  assert.equal(w.rate(), 5);
  assert.equal(w.etaS(110, 210), 20);
  assert.equal(new RateWindow().etaS(0, 10), null);
});

test('off a TTY: plain lines at the interval and a final line, with ETA and fields', () => {
  let t = 0;
  const out = new Capture(false);
  const p = createProgress({ label: 'train', total: 100, unit: 'steps', stream: out, intervalS: 10, now: () => t });
  for (let step = 1; step <= 100; step++) {
    t = step * 1000; // 1 step per second
    p.update(step, { loss: 2 - step / 100 });
  }
  p.stop();
  const lines = out.text.trim().split('\n');
  // At steps 1, 11, 21, ..., 91 (every 10 s) plus the final line.
  assert.equal(lines.length, 11, out.text);
  assert.equal(lines[1], 'train: 11/100 steps (11.0%), 1.0 steps/s, ETA 1m29s, loss=1.89');
  assert.match(lines[10]!, /^train: 100\/100 steps \(100\.0%\), 1\.0 steps\/s, done in 1m40s, loss=1$/);
  assert.ok(!out.text.includes('\x1b'), 'no terminal escapes in logs');
});

test('off a TTY with a logger: structured progress records', () => {
  let t = 0;
  const sink = new Capture(false);
  const logger = pino({ base: null, timestamp: false }, sink);
  const p = createProgress({ label: 'eval', total: 50, unit: 'images', logger, intervalS: 0, now: () => t });
  t = 2000;
  p.update(20, { auroc: 0.9 });
  p.stop();
  const recs = sink.text
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(recs.length, 2);
  assert.deepEqual(
    { ...recs[0], msg: undefined },
    { level: 30, progress: 'eval', done: 20, total: 50, rate_per_s: 10, eta_s: 3, final: false, auroc: 0.9, msg: undefined },
  );
  assert.equal(recs[0]!.msg, 'eval: 20/50 images (40.0%), 10.0 images/s, ETA 3s, auroc=0.9');
});

test('on a TTY: a bar with the label, count and fields', () => {
  let t = 0;
  const out = new Capture(true);
  const p = createProgress({ label: 'prepare', total: 10, unit: 'shards', stream: out, now: () => t });
  for (let i = 1; i <= 10; i++) {
    t = i * 500;
    p.update(i, { file: 'shard-0003.arrow' });
  }
  p.stop();
  assert.match(out.text, /prepare .*100% \| 10\/10 shards \| 2\.0 shards\/s \| ETA 0s file=shard-0003\.arrow/);
});
