import { UserError } from '../util/errors.js';

/** One line of a JSON-lines file: its text as written, its 1-based number, its value. */
export interface JsonlLine {
  readonly text: string;
  readonly n: number;
  readonly doc: unknown;
}

/**
 * The non-blank lines of a JSON-lines file (metrics.jsonl), parsed. A last line without its
 * newline that does not parse is what a process killed mid-write leaves behind: it is left out and
 * `torn` is its number. Any other bad line is a UserError naming the file and line, `hint` saying
 * what to do about it.
 */
export function parseJsonl(text: string, file: string, hint?: string): { lines: JsonlLine[]; torn: number | null } {
  const raw = text.split('\n');
  const unterminated = text.length > 0 && !text.endsWith('\n');
  const lines: JsonlLine[] = [];
  for (let i = 0; i < raw.length; i++) {
    const line = raw[i]!;
    if (!line.trim()) continue;
    try {
      lines.push({ text: line, n: i + 1, doc: JSON.parse(line) });
    } catch (e) {
      if (unterminated && i === raw.length - 1) return { lines, torn: i + 1 };
      throw new UserError(`${file}:${i + 1}: not valid JSON (${(e as Error).message})${hint ? `; ${hint}` : ''}`);
    }
  }
  return { lines, torn: null };
}
