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
