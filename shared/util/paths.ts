import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The package root (the directory holding package.json), found by walking up from this
 * module, so it is the same whether code runs from the sources or from `dist/`.
 */
export const packageRoot: string = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'tsconfig.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('cxr-align: cannot find the package root above ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
})();

/** The team's shared handbook and data folder, beside the checkout (`../shared`). */
export const teamSharedDir: string = path.resolve(packageRoot, '..', 'shared');

/** Compiled entry points, for spawning processes. */
export const workerEntry: string = path.join(packageRoot, 'bin', 'worker.js');
export const coordinatorEntry: string = path.join(packageRoot, 'bin', 'coordinator.js');
