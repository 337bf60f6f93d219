import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { packageRoot } from '../../shared/util/paths.js';
import { logFormat } from '../../shared/util/log.js';

test('log format: JSON off a TTY, pretty on one, CXR_LOG_FORMAT overrides, nonsense refused', () => {
  assert.equal(logFormat({}, false), 'json');
  assert.equal(logFormat({}, true), 'pretty');
  assert.equal(logFormat({ CXR_LOG_FORMAT: 'json' }, true), 'json');
  assert.equal(logFormat({ CXR_LOG_FORMAT: 'Pretty' }, false), 'pretty');
  assert.throws(() => logFormat({ CXR_LOG_FORMAT: 'xml' }, false), /use 'json' or 'pretty'/);
});

test('a logger in a real process writes JSON lines to stderr off a TTY, stdout untouched', async () => {
  const script = `import('${path.join(packageRoot, 'dist', 'shared', 'util', 'log.js')}').then(({ createLogger }) => { const l = createLogger('t'); l.info({ step: 3 }, 'hello'); l.debug('hidden'); })`;
  const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
    execFile(
      process.execPath,
      ['-e', script],
      { env: { ...process.env, CXR_LOG_FORMAT: '', CXR_LOG_LEVEL: 'info' } },
      (err, stdout, stderr) => (err ? reject(err) : resolve({ stdout, stderr })),
    ),
  );
  assert.equal(stdout, '');
  const lines = stderr
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.msg, 'hello');
  assert.equal(lines[0]!.step, 3);
  assert.equal(lines[0]!.name, 't');
});
