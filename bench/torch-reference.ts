import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { packageRoot } from '../shared/util/paths.js';

/**
 * Runs a PyTorch reference script of bench/reference/ on one thread with Debian's python3-torch and
 * returns the JSON object of its last stdout line, or why it could not run. One thread for the
 * BLAS too (torch.set_num_threads does not reach a pthread OpenBLAS), and without the OPENBLAS_*
 * tuning variables this machine sets, which slow it down. `extraEnv` adds to its environment.
 */
export function runTorchReference<T>(script: string, args: readonly string[], extraEnv: NodeJS.ProcessEnv = {}): T | string {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: '1', OMP_NUM_THREADS: '1', ...extraEnv };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('/usr/bin/python3', [path.join(packageRoot, 'bench', 'reference', script), ...args], { env, encoding: 'utf8' });
  if (r.status !== 0)
    return `PyTorch reference ${script} unavailable (${(r.stderr || r.error?.message || '').trim().split('\n').pop()}); apt-get install -y python3-torch libopenblas0-pthread`;
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}
