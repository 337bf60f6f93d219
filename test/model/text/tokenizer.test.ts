import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { loadTokenizer } from '../../../model/text/tokenizer.js';
import { packageRoot } from '../../../shared/util/paths.js';
import { UserError } from '../../../shared/util/errors.js';
import { writeBertTokenizerFiles, writeClipTokenizerFiles } from '../../helpers/tokenizer-files.js';

type Ids = Record<string, number[]>;
const fixture = JSON.parse(readFileSync(path.join(packageRoot, 'test', 'fixtures', 'prompt-tokens.json'), 'utf8')) as Record<
  'clip_openai' | 'clip_small' | 'bert_small',
  Ids
>;

function padded(ids: number[], ctx: number, pad: number): number[] {
  return [...ids, ...new Array<number>(ctx - ids.length).fill(pad)];
}

async function withDir(f: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cxr-tok-'));
  try {
    await f(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('CLIP BPE (vocab.json + merges.txt): the ids of open_clip SimpleTokenizer for every label prompt, padded with 0 to 77', () =>
  withDir((dir) => {
    writeClipTokenizerFiles(dir);
    const tok = loadTokenizer(dir, 'clip');
    assert.equal(tok.padId, 0);
    for (const [prompt, ids] of Object.entries(fixture.clip_small)) assert.deepEqual(tok.encode(prompt, 77), padded(ids, 77, 0), prompt);
    // Cut to the context with the end-of-text token kept last, as open_clip does.
    const long = fixture.clip_small['Negative Enlarged Cardiomediastinum']!;
    assert.deepEqual(tok.encode('Negative Enlarged Cardiomediastinum', 6), [...long.slice(0, 5), long.at(-1)]);
  }));

test('BERT WordPiece (vocab.txt): the ids of Hugging Face BertTokenizer rules for every label prompt, padded with [PAD] to 256', () =>
  withDir((dir) => {
    writeBertTokenizerFiles(dir);
    const tok = loadTokenizer(dir, 'bert');
    assert.equal(tok.padId, 0);
    for (const [prompt, ids] of Object.entries(fixture.bert_small)) assert.deepEqual(tok.encode(prompt, 256), padded(ids, 256, 0), prompt);
    assert.deepEqual(tok.encode('Pleural Effusion, a pneumothorax!', 8), [2, 7, 17, 1, 20, 13, 14, 3]); // ',' is [UNK] here, '!' cut
  }));

test("CLIP with OpenAI's vocabulary: open_clip's ids for every label prompt (CXR_CLIP_BPE names bpe_simple_vocab_16e6.txt.gz)", async (t) => {
  const bpe = process.env.CXR_CLIP_BPE;
  if (!bpe || !existsSync(bpe)) {
    t.skip('CXR_CLIP_BPE does not name open_clip bpe_simple_vocab_16e6.txt.gz (it is in the open_clip_torch package)');
    return;
  }
  await withDir((dir) => {
    copyFileSync(bpe, path.join(dir, 'bpe_simple_vocab_16e6.txt.gz'));
    const tok = loadTokenizer(dir, 'clip');
    for (const [prompt, ids] of Object.entries(fixture.clip_openai)) assert.deepEqual(tok.encode(prompt, 77), padded(ids, 77, 0), prompt);
  });
});

test('a directory without tokenizer files, or a vocabulary without its special tokens, is refused naming the file', () =>
  withDir(async (dir) => {
    assert.throws(
      () => loadTokenizer(dir, 'bert'),
      (e: unknown) => e instanceof UserError && /no tokenizer files.*vocab\.txt/.test(e.message),
    );
    assert.throws(() => loadTokenizer(dir, 'clip'), /merges\.txt/);
    await writeFile(path.join(dir, 'vocab.txt'), 'hello\nworld\n');
    assert.throws(() => loadTokenizer(dir, 'bert'), /vocab\.txt: the vocabulary has no \[PAD\] token/);
    await writeFile(path.join(dir, 'tokenizer.json'), '{"version": "1.0"}');
    assert.throws(() => loadTokenizer(dir, 'bert'), /tokenizer\.json: no 'model' section/);
  }));
