import { pino, type Logger } from 'pino';

/**
 * Structured logs: JSON lines off a TTY (Kubernetes, CI), human-readable on a TTY.
 * Logs go to stderr so that stdout stays clean for command output (`--json`, tables).
 */
export function createLogger(name: string, level = process.env.CXR_LOG_LEVEL ?? 'info'): Logger {
  if (process.stderr.isTTY) {
    return pino({
      name,
      level,
      transport: { target: 'pino-pretty', options: { destination: 2, colorize: true, ignore: 'pid,hostname' } },
    });
  }
  return pino({ name, level }, pino.destination(2));
}

export type { Logger };
