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
  // Strict UTF-8: a replacement character in a patient id would put one patient in two splits unnoticed.
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const where = new ByteLines();
  const parser = new CsvParser(file);
  let first = true;
  try {
    for await (const bytes of stream as AsyncIterable<Buffer>) {
      let chunk: string;
      try {
        chunk = decoder.decode(bytes, { stream: true });
      } catch {
        throw new UserError(`${file}:${where.invalidAt(bytes)}: invalid UTF-8; save the CSV as UTF-8`);
      }
      where.advance(bytes);
      if (first) {
        if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
        first = false;
      }
      const out: CsvRecord[] = [];
      parser.push(chunk, out);
      if (out.length) yield out;
    }
    try {
      const rest = decoder.decode();
      if (rest) {
        const out: CsvRecord[] = [];
        parser.push(rest, out);
        if (out.length) yield out;
      }
    } catch {
      throw new UserError(
        `${file}:${where.invalidAt(Buffer.alloc(0))}: invalid UTF-8 (a sequence cut off at the end of the file); save the CSV as UTF-8`,
      );
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${file}: cannot read${gz ? ' (gzip)' : ''} CSV: ${(e as Error).message}`);
  }
  const out: CsvRecord[] = [];
  parser.end(out);
  if (out.length) yield out;
}

/**
 * Line and column (1-based, in bytes) in a byte stream fed chunk by chunk, to name where a UTF-8
 * decoder failed. Keeps the last bytes of an unfinished character of the previous chunk.
 */
export class ByteLines {
  private line = 1;
  /** Bytes since the last newline. */
  private col = 0;
  /** The tail of the previous chunk that may start a character the next chunk finishes. */
  private tail: Uint8Array = new Uint8Array(0);

  advance(bytes: Buffer): void {
    let last = -1;
    for (let i = bytes.indexOf(0x0a); i !== -1; i = bytes.indexOf(0x0a, i + 1)) {
      this.line++;
      last = i;
    }
    this.col = last === -1 ? this.col + bytes.length : bytes.length - last - 1;
    const k = utf8Boundary(bytes);
    this.tail = bytes.slice(k);
  }

  /** "LINE:COLUMN" of the first invalid byte in `bytes` (the chunk the decoder refused), counting from the stream's start. */
  invalidAt(bytes: Uint8Array): string {
    const all = new Uint8Array(this.tail.length + bytes.length);
    all.set(this.tail);
    all.set(bytes, this.tail.length);
    const bad = firstInvalidUtf8(all);
    // The tail's bytes are already counted in line/col.
    let line = this.line;
    let col = this.col - this.tail.length;
    for (let i = 0; i < bad; i++) {
      if (all[i] === 0x0a) {
        line++;
        col = 0;
      } else col++;
    }
    return `${line}:${col + 1}`;
  }
}

/** Start of the unfinished UTF-8 character at the end of `b` (b.length when it ends on a boundary). */
function utf8Boundary(b: Uint8Array): number {
  for (let i = b.length - 1; i >= Math.max(0, b.length - 3); i--) {
    const x = b[i]!;
    if ((x & 0xc0) === 0x80) continue;
    const need = x >= 0xf0 ? 4 : x >= 0xe0 ? 3 : x >= 0xc0 ? 2 : 1;
    return b.length - i < need ? i : b.length;
  }
  return b.length;
}

/** Offset of the first byte that starts no complete, valid UTF-8 sequence (b.length when every one is). */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const x = b[i]!;
    let n: number;
    let min: number;
    if (x < 0x80) {
      i++;
      continue;
    } else if (x >= 0xc2 && x <= 0xdf) [n, min] = [1, 0x80];
    else if (x >= 0xe0 && x <= 0xef) [n, min] = [2, 0x800];
    else if (x >= 0xf0 && x <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    if (i + n >= b.length) return i;
    let cp = x & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const c = b[i + k]!;
      if ((c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return b.length;
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
