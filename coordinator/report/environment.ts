import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';
import { packageRoot } from '../../shared/util/paths.js';
import { ENVIRONMENT_FILE } from '../../shared/run/files.js';

/**
 * The environment a run executed in, for its report: what produced the numbers. The trainer
 * writes it once at start (`writeRunEnvironment`) so the report shows the run's machine, not
 * the machine the report happens to be rendered on.
 */
export interface EnvironmentInfo {
  node: string;
  platform: string;
  arch: string;
  host: string;
  cpus: number;
  memory_gib: number;
  package_version: string | null;
  git_commit: string | null;
  git_dirty: boolean | null;
  captured_at: string;
  [key: string]: unknown;
}

/** The package's git commit, or null outside a checkout (installed package, container image). */
export function gitCommit(): { commit: string | null; dirty: boolean | null } {
  const git = (args: string[]) =>
    execFileSync('git', args, { cwd: packageRoot, encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  try {
    const commit = git(['rev-parse', 'HEAD']);
    let dirty: boolean | null = null;
    try {
      dirty = git(['status', '--porcelain', '--untracked-files=no']).length > 0;
    } catch {
      dirty = null;
    }
    return { commit: /^[0-9a-f]{40}$/.test(commit) ? commit : null, dirty };
  } catch {
    return { commit: null, dirty: null };
  }
}

/** Capture this process's environment; `extra` adds run facts (backend, workers, ...). */
export function captureEnvironment(extra: Record<string, unknown> = {}): EnvironmentInfo {
  let version: string | null = null;
  try {
    version = (JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version?: string }).version ?? null;
  } catch {
    version = null;
  }
  const { commit, dirty } = gitCommit();
  return {
    node: process.version,
    platform: `${os.type()} ${os.release()}`,
    arch: process.arch,
    host: os.hostname(),
    cpus: os.cpus().length,
    memory_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    package_version: version,
    git_commit: commit,
    git_dirty: dirty,
    captured_at: new Date().toISOString(),
    ...extra,
  };
}

/**
 * Write `RUN/environment.json`. The trainer calls this at start with at least
 * `{ backend: 'tensorflow' | 'wasm' | 'cpu', workers: N }`.
 */
export async function writeRunEnvironment(runDir: string, extra: Record<string, unknown> = {}): Promise<EnvironmentInfo> {
  const env = captureEnvironment(extra);
  await writeJsonAtomic(path.join(runDir, ENVIRONMENT_FILE), env);
  return env;
}
