import { writeFileSync } from 'node:fs';
import * as path from 'node:path';

/**
 * Tokenizer files of small vocabularies in the real formats, for tests: the token ids the
 * reference tokenizers give on them for the label prompts are in test/fixtures/prompt-tokens.json
 * (test/reference/prompt_tokens.py made them).
 */

/** Words the small vocabularies know whole; other words split into pieces (or [UNK] in BERT). */
const WORDS = ['positive', 'negative', 'pleural', 'edema', 'no', 'finding', 'lung', 'fracture'];

/** GPT-2's byte-to-unicode characters in open_clip's order (the kept bytes first). */
function byteChars(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  let n = 0;
  const others = Array.from({ length: 256 }, (_, b) => b).filter((b) => !keep.includes(b));
  return [...keep.map((b) => String.fromCodePoint(b)), ...others.map(() => String.fromCodePoint(256 + n++))];
}

/** CLIP BPE merges that build each of WORDS (and two word starts) left to right, deduplicated. */
function clipMerges(): string[] {
  const out: string[] = [];
  for (const w of [...WORDS, 'pneumo', 'cardio']) {
    const chars = [...w];
    const whole = !['pneumo', 'cardio'].includes(w);
    let left = chars[0]!;
    for (let i = 1; i < chars.length; i++) {
      const right = whole && i === chars.length - 1 ? `${chars[i]}</w>` : chars[i]!;
      const m = `${left} ${right}`;
      if (!out.includes(m)) out.push(m);
      left += right;
    }
  }
  return out;
}

/** vocab.json + merges.txt of a small CLIP BPE, ids in open_clip's order (bytes, bytes + </w>, merges, sot, eot). */
export function writeClipTokenizerFiles(dir: string): { vocabSize: number } {
  const bytes = byteChars();
  const merges = clipMerges();
  const list = [...bytes, ...bytes.map((b) => `${b}</w>`), ...merges.map((m) => m.replace(' ', '')), '<|startoftext|>', '<|endoftext|>'];
  const vocab: Record<string, number> = {};
  list.forEach((t, i) => {
    vocab[t] = i;
  });
  writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(vocab));
  writeFileSync(path.join(dir, 'merges.txt'), `#version: 0.2\n${merges.join('\n')}\n`);
  return { vocabSize: list.length };
}

/** vocab.txt of a small BERT WordPiece: specials, WORDS, a few pieces, single letters with and without ##. */
export function writeBertTokenizerFiles(dir: string): { vocabSize: number } {
  const letters = [...'abcdefghijklmnopqrstuvwxyz'];
  const list = [
    '[PAD]',
    '[UNK]',
    '[CLS]',
    '[SEP]',
    '[MASK]',
    ...WORDS,
    'pneumo',
    '##thorax',
    'cardio',
    '##megaly',
    'effusion',
    'support',
    '##s',
    ...letters,
    ...letters.filter((c) => c !== 'z').map((c) => `##${c}`),
  ];
  writeFileSync(path.join(dir, 'vocab.txt'), `${list.join('\n')}\n`);
  return { vocabSize: list.length };
}
