import { test } from 'node:test';
import { webGpuMissing } from '../helpers/webgpu.js';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkDisk, checkNativeAddon, checkNode, formatChecks, type Check } from '../../coordinator/ops/doctor.js';
import { coordinatorEntry } from '../../shared/util/paths.js';

function doctor(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(process.execPath, [coordinatorEntry, 'doctor', ...args], { timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

test('doctor on this machine: portable backends work, a busy port fails with a hint, exit code says usable', async () => {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'cxr-doctor-'));
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '0.0.0.0', () => r()));
  const busyPort = (busy.address() as net.AddressInfo).port;
  try {
    const runDir = path.join(tmp, 'runs', 'new');
    const bad = await doctor(['--run-dir', runDir, '--port', String(busyPort), '--json']);
    assert.equal(bad.code, 1, bad.stderr);
    const report = JSON.parse(bad.stdout) as { usable: boolean; checks: Check[] };
    assert.equal(report.usable, false);
    const byName = new Map(report.checks.map((c) => [c.name, c]));
    assert.equal(byName.get('backend wasm')?.status, 'ok', JSON.stringify(byName.get('backend wasm')));
    assert.equal(byName.get('backend cpu')?.status, 'ok');
    assert.equal(byName.get('ZeroMQ')?.status, 'ok');
    assert.match(byName.get('ZeroMQ')!.detail, /^zeromq 6\.\d+\.\d+ \(libzmq \d+\.\d+\.\d+\)$/);
    assert.equal(byName.get('Node.js')?.status, 'ok');
    // WebGPU is optional: a hardware adapter is ok, the software one (CI's llvmpipe) or none warns, naming what it found.
    const webgpu = byName.get('backend webgpu')!;
    assert.notEqual(webgpu.status, 'fail', JSON.stringify(webgpu));
    assert.match(
      webgpu.detail,
      (await webGpuMissing()) === null ? /^(WebGPU computes on|only a software adapter: ).+\(/ : /no WebGPU adapter/,
    );
    // CI builds the addon (.ci/run needs it), and this host's THP policy is madvise.
    assert.equal(byName.get('native addon')?.status, 'ok', JSON.stringify(byName.get('native addon')));
    assert.match(
      byName.get('native addon')!.detail,
      /^built: shared-buffer all-reduce; (wasm heap on transparent huge pages \(THP (madvise|always)\)|no transparent huge pages on this OS)$/,
    );
    const port = byName.get(`port ${busyPort}`)!;
    assert.equal(port.status, 'fail');
    assert.match(port.hint!, new RegExp(`ss -ltnp \\| grep :${busyPort}`));
    const disk = byName.get(`disk ${runDir}`)!;
    assert.equal(disk.status, 'ok');
    assert.match(disk.detail, /GiB free \(on .*cxr-doctor-.*; the directory does not exist yet\)/);
    for (const c of report.checks) if (c.status !== 'ok') assert.ok(c.hint && c.hint.length > 10, `${c.name} has no hint`);

    await new Promise<void>((r) => busy.close(() => r()));
    const good = await doctor(['--run-dir', runDir, '--port', String(busyPort)]);
    assert.equal(good.code, 0, good.stdout + good.stderr);
    assert.match(good.stdout, /^usable: yes/m);
    assert.ok(!good.stdout.includes('\x1b['));
    const refused = await doctor(['--port', 'http']);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /--port http: not a port number/);
  } finally {
    busy.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  }
});

test('doctor checks in isolation: the native addon missing or THP never warns with a hint', () => {
  const missing = checkNativeAddon({ addon: null, why: 'the shared-memory addon is not available (Cannot find module)' }, 'madvise');
  assert.equal(missing.status, 'warn');
  assert.match(missing.detail, /not available/);
  assert.match(missing.hint!, /python3, make and g\+\+/);
  const never = checkNativeAddon({ addon: {}, why: 'loaded' }, 'never');
  assert.equal(never.status, 'warn');
  assert.match(never.detail, /4 KiB pages \(THP 'never' on this host\)/);
  assert.match(never.hint!, /transparent_hugepage\/enabled/);
  assert.equal(checkNativeAddon({ addon: {}, why: 'loaded' }, 'madvise').status, 'ok');
  assert.match(checkNativeAddon({ addon: {}, why: 'loaded' }, null).detail, /no transparent huge pages on this OS/);
});

test('doctor checks in isolation: old Node fails, a full disk threshold fails, output marks problems', async () => {
  assert.equal(checkNode('18.19.0').status, 'fail');
  assert.match(checkNode('18.19.0').hint!, /Node 20 or newer/);
  const full = await checkDisk(os.tmpdir(), 1e9);
  assert.equal(full.status, 'fail');
  assert.match(full.hint!, /--min-free-gib/);
  const text = formatChecks([{ name: 'x', status: 'fail', detail: 'd', hint: 'do this' }], false, false);
  assert.match(text, /^FAIL {2}x {2}d\n\s+hint: do this\n\nusable: no/);
});
