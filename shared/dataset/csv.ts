import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { UserError } from '../util/errors.js';

/** One CSV record: its fields and the 1-based line it starts on (the header is line 1). */
export interface CsvRecord {
  line: number;
  fields: string[];
}

/**
 * An RFC 4180 CSV parser fed in chunks: quoted fields with commas, doubled quotes and newlines,
 * CRLF or LF line ends. Records without quotes (nearly all of a label file) take a fast path
 * through indexOf/split; the character loop runs only for records that contain a quote.
 */
export class CsvParser {
  private buf = '';
  private line = 1;

  constructor(private readonly source: string) {}

  push(text: string, out: CsvRecord[]): void {
    this.buf += text;
    this.drain(out, false);
  }

  end(out: CsvRecord[]): void {
    this.drain(out, true);
    if (this.buf.length > 0) throw new UserError(`${this.source}:${this.line}: unterminated quoted field at end of file`);
  }

  private drain(out: CsvRecord[], final: boolean): void {
    const s = this.buf;
    let at = 0;
    for (;;) {
      if (at >= s.length) break;
      const nl = s.indexOf('\n', at);
      const q = s.indexOf('"', at);
      if (q === -1 || (nl !== -1 && q > nl)) {
        if (nl === -1 && !final) break;
        const end = nl === -1 ? s.length : nl;
        let text = s.slice(at, end);
        if (text.endsWith('\r')) text = text.slice(0, -1);
        if (text.length > 0) out.push({ line: this.line, fields: text.split(',') });
        this.line++;
        at = end + 1;
        continue;
      }
      const r = this.quoted(s, at, final);
      if (!r) break;
      if (r.fields.length > 1 || r.fields[0] !== '') out.push({ line: this.line, fields: r.fields });
      this.line += r.lines;
      at = r.next;
    }
    this.buf = s.slice(Math.min(at, s.length));
  }

  /** Parse one record containing quotes starting at `at`; null when it continues past the buffer. */
  private quoted(s: string, at: number, final: boolean): { fields: string[]; next: number; lines: number } | null {
    const fields: string[] = [];
    let field = '';
    let i = at;
    let lines = 1;
    let inQuotes = false;
    while (i < s.length) {
      const ch = s[i]!;
      if (inQuotes) {
        if (ch === '"') {
          if (s[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          if (i + 1 >= s.length && !final) return null;
          inQuotes = false;
        } else {
          if (ch === '\n') lines++;
          field += ch;
        }
        i++;
        continue;
      }
      if (ch === '"') {
        inQuotes = true;
      } else if (ch === ',') {
        fields.push(field);
        field = '';
      } else if (ch === '\n') {
        fields.push(field.endsWith('\r') ? field.slice(0, -1) : field);
        return { fields, next: i + 1, lines };
      } else {
        field += ch;
      }
      i++;
    }
    if (!final) return null;
    if (inQuotes) throw new UserError(`${this.source}:${this.line}: unterminated quoted field`);
    fields.push(field.endsWith('\r') ? field.slice(0, -1) : field);
    return { fields, next: s.length, lines };
  }
}

/**
 * Records of a CSV file, gzip-compressed or not (detected by its magic bytes, not its name),
 * streamed: memory is one chunk plus the records of that chunk.
 */
export async function* readCsv(file: string): AsyncGenerator<CsvRecord[]> {
  const head = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    createReadStream(file, { start: 0, end: 1 })
      .on('data', (c) => chunks.push(c as Buffer))
      .on('end', () => resolve(Buffer.concat(chunks)))
      .on('error', reject);
  }).catch((e: NodeJS.ErrnoException) => {
    throw new UserError(`${file}: cannot read the label CSV (${e.code === 'ENOENT' ? 'no such file' : e.message})`);
  });
  const gz = head.length === 2 && head[0] === 0x1f && head[1] === 0x8b;
  const raw = createReadStream(file, { highWaterMark: 1 << 20 });
  const stream = gz ? raw.pipe(createGunzip()) : raw;
  raw.on('error', (e) => stream.destroy(e));
  stream.setEncoding('utf8');
  const parser = new CsvParser(file);
  let first = true;
  try {
    for await (let chunk of stream as AsyncIterable<string>) {
      if (first) {
        if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
        first = false;
      }
      const out: CsvRecord[] = [];
      parser.push(chunk, out);
      if (out.length) yield out;
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${file}: cannot read${gz ? ' (gzip)' : ''} CSV: ${(e as Error).message}`);
  }
  const out: CsvRecord[] = [];
  parser.end(out);
  if (out.length) yield out;
}

/** Column index by name; a missing column is an error naming the file and every missing name. */
export function columnIndex(file: string, header: string[], required: readonly string[]): Map<string, number> {
  const idx = new Map<string, number>();
  header.forEach((h, i) => {
    const name = h.trim();
    if (!idx.has(name)) idx.set(name, i);
  });
  const missing = required.filter((r) => !idx.has(r));
  if (missing.length > 0)
    throw new UserError(
      `${file}: missing required column${missing.length > 1 ? 's' : ''} ${missing.map((m) => `'${m}'`).join(', ')} (header has: ${header.join(', ')})`,
    );
  return idx;
}
