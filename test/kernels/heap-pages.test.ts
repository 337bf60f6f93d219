import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { shmNative } from '../../native/addon.js';
import { thpPolicy } from '../../kernels/heap-pages.js';

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'wasm-heap-pages.js');

function heapRun(env: NodeJS.ProcessEnv): { reason: string; anonHugeKb: number; finite: boolean } {
  const r = spawnSync(process.execPath, [fixture, '--run'], { env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { reason: string; anonHugeKb: number; finite: boolean };
}

test('thpPolicy reads the bracketed choice of the kernel file, null where there is none', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'thp-'));
  try {
    const f = path.join(dir, 'enabled');
    writeFileSync(f, 'always [madvise] never\n');
    assert.equal(thpPolicy(f), 'madvise');
    writeFileSync(f, '[always] madvise never\n');
    assert.equal(thpPolicy(f), 'always');
    assert.equal(thpPolicy(path.join(dir, 'missing')), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the wasm heap is advised onto transparent huge pages where the policy is madvise, and CXR_WASM_HUGEPAGES=0 leaves it on small ones', () => {
  const policy = thpPolicy();
  const on = heapRun({});
  const off = heapRun({ CXR_WASM_HUGEPAGES: '0' });
  assert.ok(on.finite && off.finite);
  assert.match(off.reason, /heap on default pages \(CXR_WASM_HUGEPAGES=0\)/);
  if (policy === 'madvise' && shmNative().addon) {
    assert.match(on.reason, /heap advised onto 2 MiB transparent huge pages/);
    // ~100 MiB of tensors went through the heap: with the advice much of it is on 2 MiB pages
    // (~75 MiB here; the bound leaves room for a host whose memory is too fragmented for many),
    // without it next to nothing of this process is (neither V8 nor glibc asks for them).
    assert.ok(on.anonHugeKb >= 8 * 1024, `only ${on.anonHugeKb} kB on huge pages with the advice`);
    assert.ok(off.anonHugeKb < on.anonHugeKb / 4, `${off.anonHugeKb} kB on huge pages without the advice, ${on.anonHugeKb} with it`);
  } else if (policy === 'madvise') {
    assert.match(on.reason, /heap on 4 KiB pages \(the shared-memory addon is not available/);
  } else if (policy === 'never') {
    assert.match(on.reason, /transparent huge pages are 'never' on this host/);
  } else if (policy === 'always') {
    assert.match(on.reason, /heap on transparent huge pages \(THP always\)/);
  } else {
    assert.match(on.reason, /no transparent huge pages on this OS/);
  }
});
