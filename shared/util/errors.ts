/**
 * An error the user can fix: bad input, a missing file, a refused option.
 * The CLI prints only its message (no stack) and exits with `exitCode`.
 * Messages name the file, row or field and say what to do.
 */
export class UserError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 2) {
    super(message);
    this.name = 'UserError';
    this.exitCode = exitCode;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

/** Message of any thrown value, for logs and error lines. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * A full disk as a UserError naming the file being written (Node's ENOSPC message names none),
 * with `after` saying what is still intact and what to do; other errors unchanged.
 */
export function diskFull(e: unknown, file: string, after: string): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return e;
  return new UserError(`${file}: no space left on device (${code}); ${after}`, 1);
}
