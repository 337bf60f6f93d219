import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { packageRoot } from '../../shared/util/paths.js';

/**
 * Runs a reference script of test/reference/ with Debian's python3-torch on one thread (without
 * the OPENBLAS_* tuning variables this machine sets) and returns the JSON of its last stdout line,
 * or a reason to skip when python3 with torch is missing. A script that runs and fails throws.
 */
export function torchReference<T>(script: string, args: readonly string[]): { value: T } | { skip: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: '1', OMP_NUM_THREADS: '1' };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const probe = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { env, stdio: 'ignore' });
  if (probe.status !== 0) return { skip: 'PyTorch reference skipped: no /usr/bin/python3 with torch (apt-get install -y python3-torch)' };
  const r = spawnSync('/usr/bin/python3', [path.join(packageRoot, 'test', 'reference', script), ...args], {
    env,
    encoding: 'utf8',
    maxBuffer: 256 << 20,
  });
  if (r.status !== 0) throw new Error(`test/reference/${script} failed: ${(r.stderr || r.error?.message || '').trim()}`);
  return { value: JSON.parse(r.stdout.trim().split('\n').pop()!) as T };
}
