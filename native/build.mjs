// `npm install` builds the optional shared-memory addon (shm_map.c) with node-gyp. It is optional:
// without it the collectives keep their other paths, so a machine without a compiler still
// installs; this prints why and exits 0.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));
// npm names its node-gyp in lifecycle scripts; run by hand, take the one npm ships beside node.
const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gyp = process.env.npm_config_node_gyp ?? (existsSync(bundled) ? bundled : undefined);
// Offline, node-gyp needs the headers of the node that runs it; they ship beside it on most installs.
const prefix = join(dirname(process.execPath), '..');
const localHeaders = !process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'));
const args = ['rebuild', '--directory', dir, '--loglevel', 'warn', ...(localHeaders ? [`--nodedir=${prefix}`] : [])];
const r = gyp
  ? spawnSync(process.execPath, [gyp, ...args], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' })
  : spawnSync('node-gyp', args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
if (r.status !== 0) {
  const why = (r.error?.message ?? `${r.stderr ?? ''}${r.stdout ?? ''}`).trim().split('\n').slice(-3).join(' | ');
  process.stderr.write(
    `cxr-align: the shared-memory addon was not built (${why || `exit ${r.status}`}); same-host all-reduce uses the ring through /dev/shm instead\n`,
  );
}
