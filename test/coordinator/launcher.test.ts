import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { WorkerProcesses } from '../../coordinator/job/launcher.js';
import { createLogger } from '../../shared/util/log.js';

const log = createLogger('test', 'silent');

test('launcher: worker i gets --device i, CUDA_VISIBLE_DEVICES=i and CXR_WEBGPU_DEVICE=i with --gpu, the token in its environment only, and prefixed output', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-launch-'));
  try {
    // A stand-in entry point that prints what it was given, so the launch itself is what is tested.
    const entry = path.join(dir, 'echo-worker.mjs');
    writeFileSync(
      entry,
      `const a = process.argv.slice(2); console.log(JSON.stringify({ args: a, cuda: process.env.CUDA_VISIBLE_DEVICES ?? null, webgpu: process.env.CXR_WEBGPU_DEVICE ?? null, token: process.env.CXR_JOB_TOKEN, parent: process.env.CXR_COORDINATOR_PID, ppid: process.ppid })); console.error('to stderr'); process.exit(a.includes('1') && a.includes('--fail') ? 3 : 0);\n`,
    );
    for (const gpu of [true, false]) {
      const lines: string[] = [];
      const procs = new WorkerProcesses({
        count: 2,
        coordinator: '127.0.0.1:9',
        token: 'tok',
        gpu,
        entry,
        args: ['--x'],
        output: (l) => lines.push(l),
        log,
      });
      procs.expectExit();
      procs.start();
      assert.deepEqual(await procs.waitExit(10_000), []);
      for (const i of [0, 1]) {
        const out = lines.find((l) => l.startsWith(`[worker ${i}] {`))!;
        const got = JSON.parse(out.slice(`[worker ${i}] `.length));
        assert.deepEqual(got.args, ['--coordinator', '127.0.0.1:9', '--device', String(i), '--x']);
        assert.equal(got.cuda, gpu ? String(i) : (process.env.CUDA_VISIBLE_DEVICES ?? null));
        assert.equal(got.webgpu, gpu ? String(i) : (process.env.CXR_WEBGPU_DEVICE ?? null));
        assert.equal(got.token, 'tok');
        // The worker can tell its starting coordinator is gone (control-client.ts, register).
        assert.equal(got.parent, String(process.pid));
        assert.equal(got.ppid, process.pid);
        assert.ok(lines.includes(`[worker ${i}] to stderr`));
      }
    }
    // An exit before expectExit() is a failure naming the worker, its exit code and its output.
    const procs = new WorkerProcesses({
      count: 2,
      coordinator: '127.0.0.1:9',
      token: 'tok',
      gpu: false,
      entry,
      perWorker: (i) => ({ args: i === 1 ? ['--fail'] : [] }),
      output: () => {},
      log,
    });
    procs.start();
    const f = await procs.failure;
    assert.match(f.message, /^worker \d \(pid \d+\) exited with code (0|3) during start-up; its last output:\n {2}\| \{/);
    await procs.kill();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
