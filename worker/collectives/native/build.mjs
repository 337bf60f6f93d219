// `npm install` builds the optional shared-memory addon (shm_map.c) with node-gyp. It is optional:
// without it the collectives keep their other paths, so a machine without a compiler still
// installs; this prints why and exits 0.
import { spawnSync } from 'node:child_process';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));
const gyp = process.env.npm_config_node_gyp;
const args = ['rebuild', '--directory', dir, '--loglevel', 'warn'];
const r = gyp ? spawnSync(process.execPath, [gyp, ...args], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' }) : spawnSync('node-gyp', args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
if (r.status !== 0) {
  const why = (r.error?.message ?? `${r.stderr ?? ''}${r.stdout ?? ''}`).trim().split('\n').slice(-3).join(' | ');
  process.stderr.write(`cxr-align: the shared-memory addon was not built (${why || `exit ${r.status}`}); same-host all-reduce uses the ring through /dev/shm instead\n`);
}
