import { pino, type Logger } from 'pino';

/**
 * Structured logs: JSON lines off a TTY (Kubernetes, CI), human-readable on a TTY.
 * Logs go to stderr so that stdout stays clean for command output (`--json`, tables).
 * CXR_LOG_FORMAT=json|pretty overrides the TTY guess (e.g. JSON from an interactive shell
 * piped into jq later, or pretty lines in a CI log); CXR_LOG_LEVEL sets the level.
 */
export type LogFormat = 'json' | 'pretty';

export function logFormat(env: NodeJS.ProcessEnv = process.env, isTTY = process.stderr.isTTY === true): LogFormat {
  const f = env.CXR_LOG_FORMAT?.trim().toLowerCase();
  if (f === 'json' || f === 'pretty') return f;
  if (f) throw new Error(`CXR_LOG_FORMAT=${env.CXR_LOG_FORMAT}: use 'json' or 'pretty'`);
  return isTTY ? 'pretty' : 'json';
}

export function createLogger(name: string, level = process.env.CXR_LOG_LEVEL ?? 'info'): Logger {
  if (logFormat() === 'pretty') {
    return pino({
      name,
      level,
      transport: { target: 'pino-pretty', options: { destination: 2, colorize: process.stderr.isTTY === true, ignore: 'pid,hostname' } },
    });
  }
  return pino({ name, level }, pino.destination(2));
}

export type { Logger };
