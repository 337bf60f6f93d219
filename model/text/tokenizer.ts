import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Tokenizer } from '@huggingface/tokenizers';
import { UserError } from '../../shared/util/errors.js';

/**
 * Tokenizers for the two text towers, from the files of a pretrained directory, run by Hugging
 * Face's tokenizers.js (no network: it is given the parsed tokenizer description). Files, first
 * found wins:
 *   - `tokenizer.json` (either kind; `tokenizer_config.json` beside it is read when present);
 *   - BERT: `vocab.txt` (WordPiece, BertTokenizer's rules: clean text, CJK split, lower case and
 *     strip accents unless `tokenizer_config.json` says `do_lower_case: false`, punctuation split);
 *   - CLIP: `vocab.json` + `merges.txt` (CLIPTokenizer's files), or open_clip's own
 *     `bpe_simple_vocab_16e6.txt.gz` (its vocabulary built as open_clip's SimpleTokenizer does).
 * Sequences are open_clip's: CLIP `<start_of_text> tokens <end_of_text>` padded with 0; BERT
 * `[CLS] tokens [SEP]` padded with [PAD]; both cut to the context keeping the closing token.
 */
export type TokenizerKind = 'clip' | 'bert';

export interface PromptTokenizer {
  readonly kind: TokenizerKind;
  /** Which file(s) it was read from, for messages and the run record. */
  readonly source: string;
  readonly padId: number;
  /** Token ids of one text with its special tokens, padded with padId to `contextLength`. */
  encode(text: string, contextLength: number): number[];
}

/** The files a directory needs for a tokenizer of this kind, as a phrase for messages. */
export function tokenizerFilesHint(kind: TokenizerKind): string {
  return kind === 'bert' ? 'tokenizer.json or vocab.txt' : 'tokenizer.json, vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz';
}

export function loadTokenizer(dir: string, kind: TokenizerKind): PromptTokenizer {
  const at = (f: string) => path.join(dir, f);
  const config = existsSync(at('tokenizer_config.json')) ? readJson(at('tokenizer_config.json')) : {};
  let desc: TokenizerJson;
  let source: string;
  if (existsSync(at('tokenizer.json'))) {
    desc = readJson(at('tokenizer.json')) as TokenizerJson;
    source = at('tokenizer.json');
    if (typeof desc.model !== 'object' || desc.model === null)
      throw new UserError(`${source}: no 'model' section; a Hugging Face tokenizer.json has the vocabulary under 'model'`);
  } else if (kind === 'bert' && existsSync(at('vocab.txt'))) {
    source = at('vocab.txt');
    desc = bertTokenizerJson(readVocabTxt(source), config.do_lower_case !== false, source);
  } else if (kind === 'clip' && existsSync(at('vocab.json')) && existsSync(at('merges.txt'))) {
    source = `${at('vocab.json')} + merges.txt`;
    const vocab = readJson(at('vocab.json')) as Record<string, number>;
    const merges = mergeLines(readFileSync(at('merges.txt'), 'utf8'));
    desc = clipTokenizerJson(vocab, merges, at('vocab.json'));
  } else if (kind === 'clip' && existsSync(at('bpe_simple_vocab_16e6.txt.gz'))) {
    source = at('bpe_simple_vocab_16e6.txt.gz');
    const merges = mergeLines(gunzipSync(readFileSync(source)).toString('utf8')).slice(0, 49152 - 256 - 2);
    desc = clipTokenizerJson(openClipVocab(merges), merges, source);
  } else {
    throw new UserError(
      `${dir}: no tokenizer files for the ${kind === 'bert' ? 'BERT' : 'CLIP'} text tower (needs ${tokenizerFilesHint(kind)})`,
    );
  }
  const tok = new Tokenizer(desc, config);
  const id = (names: string[]): number => {
    for (const n of names) {
      const v = tok.token_to_id(n);
      if (v !== undefined) return v;
    }
    throw new UserError(`${source}: the vocabulary has no ${names.join(' or ')} token`);
  };
  if (kind === 'clip') {
    const sot = id(['<|startoftext|>', '<start_of_text>']);
    const eot = id(['<|endoftext|>', '<end_of_text>']);
    return {
      kind,
      source,
      padId: 0,
      encode: (text, ctx) => frame(sot, tok.encode(cleanClipText(text), { add_special_tokens: false }).ids, eot, ctx, 0),
    };
  }
  const cls = id(['[CLS]']);
  const sep = id(['[SEP]']);
  const pad = id(['[PAD]']);
  return {
    kind,
    source,
    padId: pad,
    encode: (text, ctx) => frame(cls, tok.encode(text, { add_special_tokens: false }).ids, sep, ctx, pad),
  };
}

/** open / tokens / close cut to `ctx` keeping the close token (open_clip and HF truncation), then padded. */
function frame(open: number, ids: number[], close: number, ctx: number, pad: number): number[] {
  const body = ids.slice(0, Math.max(0, ctx - 2));
  const out = [open, ...body, close];
  while (out.length < ctx) out.push(pad);
  return out;
}

/** open_clip's SimpleTokenizer cleaning (ftfy and HTML unescaping aside): whitespace collapsed, trimmed, lower case. */
function cleanClipText(text: string): string {
  return text.replace(/\s+/g, ' ').trim().toLowerCase();
}

interface TokenizerJson {
  model?: unknown;
  [k: string]: unknown;
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new UserError(`${file}: cannot read JSON (${(e as Error).message})`);
  }
}

function readVocabTxt(file: string): Record<string, number> {
  const vocab: Record<string, number> = {};
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      // A token listed twice keeps its last line, as transformers' load_vocab does.
      const t = line.replace(/\r$/, '');
      if (t !== '') vocab[t] = i;
    });
  if (Object.keys(vocab).length === 0) throw new UserError(`${file}: the vocabulary is empty`);
  return vocab;
}

/** Merge rules "a b", one a line, after the "#version" header line both formats start with. */
function mergeLines(text: string): string[] {
  return text
    .split('\n')
    .slice(1)
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/** GPT-2's byte-to-unicode table (CLIP's bytes_to_unicode): printable bytes map to themselves. */
function bytesToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + n++);
  // open_clip lists the table in its construction order: the kept bytes first, then the others.
  const order = [...keep, ...Array.from({ length: 256 }, (_, b) => b).filter((b) => !keep.includes(b))];
  return order.map((b) => out[b]!);
}

/** open_clip's vocabulary from its merges: bytes, bytes + '</w>', one token per merge, then sot and eot. */
function openClipVocab(merges: string[]): Record<string, number> {
  const bytes = bytesToUnicode();
  const list = [...bytes, ...bytes.map((b) => `${b}</w>`), ...merges.map((m) => m.split(' ').join('')), '<start_of_text>', '<end_of_text>'];
  const vocab: Record<string, number> = {};
  list.forEach((t, i) => {
    vocab[t] = i;
  });
  return vocab;
}

function special(content: string, id: number) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** A tokenizer.json for CLIP's BPE, as Hugging Face writes it for CLIPTokenizerFast. */
function clipTokenizerJson(vocab: Record<string, number>, merges: string[], source: string): TokenizerJson {
  const specials = ['<|startoftext|>', '<|endoftext|>', '<start_of_text>', '<end_of_text>'].filter((t) => t in vocab);
  if (specials.length < 2) throw new UserError(`${source}: the vocabulary has no start-of-text and end-of-text tokens`);
  return {
    version: '1.0',
    added_tokens: specials.map((t) => special(t, vocab[t]!)),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: { Regex: "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" },
          behavior: 'Removed',
          invert: true,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: specials.includes('<|endoftext|>') ? '<|endoftext|>' : '<end_of_text>',
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/** A tokenizer.json for BERT's WordPiece, as Hugging Face writes it for BertTokenizerFast. */
function bertTokenizerJson(vocab: Record<string, number>, lowercase: boolean, source: string): TokenizerJson {
  for (const t of ['[PAD]', '[UNK]', '[CLS]', '[SEP]'])
    if (!(t in vocab)) throw new UserError(`${source}: the vocabulary has no ${t} token (a BERT vocab.txt lists it on its own line)`);
  const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].filter((t) => t in vocab);
  return {
    version: '1.0',
    added_tokens: specials.map((t) => special(t, vocab[t]!)),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: null,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  };
}
