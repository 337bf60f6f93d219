#!/usr/bin/env python3
"""Reference token ids of label prompts, for test/fixtures/prompt-tokens.json.

Usage: python3 test/reference/prompt_tokens.py clip-gz BPE.txt.gz PROMPTS.json
       python3 test/reference/prompt_tokens.py clip-dir DIR PROMPTS.json   (vocab.json + merges.txt)
       python3 test/reference/prompt_tokens.py bert-dir DIR PROMPTS.json   (vocab.txt)

CLIP: open_clip's own SimpleTokenizer (OPEN_CLIP_SRC names the directory that holds the
open_clip package source; ftfy, which only repairs mojibake, is stubbed when missing). A
clip-dir's merges.txt is handed to it as the gzip file it reads. BERT: Hugging Face
BertTokenizer's rules (BasicTokenizer: clean text, CJK split, lower case, strip accents,
punctuation split; WordpieceTokenizer: greedy longest match, '##' continuation, [UNK]), written
out below because python3 has no transformers package here. Prints {prompt: ids} without padding.
"""
import gzip, json, os, sys, tempfile, types, unicodedata


def simple_tokenizer(bpe_path):
    # ftfy only repairs mojibake; torch and numpy are only needed by the tensor-making __call__,
    # which clip_ids replaces with the same framing over encode().
    for name, stub in [('ftfy', types.SimpleNamespace(fix_text=lambda s: s)), ('torch', types.SimpleNamespace(LongTensor=object, Tensor=object)), ('numpy', types.ModuleType('numpy'))]:
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = stub
    src = os.environ.get('OPEN_CLIP_SRC')
    if not src:
        sys.exit('set OPEN_CLIP_SRC to the directory holding the open_clip package source')
    pkg = types.ModuleType('open_clip')
    pkg.__path__ = [os.path.join(src, 'open_clip')]
    sys.modules['open_clip'] = pkg
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(bpe_path=bpe_path)


def clip_ids(tok, text, context=77):
    # SimpleTokenizer.__call__: sot, encode(text), eot, cut to the context with eot kept last.
    ids = [tok.sot_token_id] + tok.encode(text) + [tok.eot_token_id]
    if len(ids) > context:
        ids = ids[:context]
        ids[-1] = tok.eot_token_id
    return ids


def is_whitespace(c):
    return c in ' \t\n\r' or unicodedata.category(c) == 'Zs'


def is_control(c):
    return c not in '\t\n\r' and unicodedata.category(c).startswith('C')


def is_punctuation(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith('P')


def is_cjk(cp):
    return any(a <= cp <= b for a, b in [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                         (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)])


def bert_basic(text):
    text = ''.join(' ' if is_whitespace(c) else c for c in text if not (ord(c) in (0, 0xFFFD) or is_control(c)))
    text = ''.join(f' {c} ' if is_cjk(ord(c)) else c for c in text)
    out = []
    for token in text.split():
        token = ''.join(c for c in unicodedata.normalize('NFD', token.lower()) if unicodedata.category(c) != 'Mn')
        word = ''
        for c in token:
            if is_punctuation(c):
                if word:
                    out.append(word)
                out.append(c)
                word = ''
            else:
                word += c
        if word:
            out.append(word)
    return out


def wordpiece(vocab, token):
    if len(token) > 100:
        return ['[UNK]']
    pieces, start = [], 0
    while start < len(token):
        end, cur = len(token), None
        while start < end:
            sub = ('##' if start > 0 else '') + token[start:end]
            if sub in vocab:
                cur = sub
                break
            end -= 1
        if cur is None:
            return ['[UNK]']
        pieces.append(cur)
        start = end
    return pieces


def bert_ids(vocab, text, context=256):
    toks = [p for w in bert_basic(text) for p in wordpiece(vocab, w)][:context - 2]
    return [vocab['[CLS]']] + [vocab[t] for t in toks] + [vocab['[SEP]']]


def main():
    mode, where, prompts_file = sys.argv[1:4]
    prompts = json.load(open(prompts_file))
    if mode == 'clip-gz':
        tok = simple_tokenizer(where)
        out = {p: clip_ids(tok, p) for p in prompts}
    elif mode == 'clip-dir':
        with open(os.path.join(where, 'merges.txt'), encoding='utf-8') as f:
            merges = f.read()
        with tempfile.NamedTemporaryFile(suffix='.txt.gz', delete=False) as tmp:
            tmp.write(gzip.compress(merges.rstrip('\n').encode('utf-8')))  # no empty last merge
        tok = simple_tokenizer(tmp.name)
        os.unlink(tmp.name)
        vocab = json.load(open(os.path.join(where, 'vocab.json'), encoding='utf-8'))
        # The directory's ids must be open_clip's (same order), else the comparison means nothing.
        assert len(tok.encoder) == len(vocab) and all(vocab.get(k.replace('<start_of_text>', '<|startoftext|>').replace('<end_of_text>', '<|endoftext|>')) == v for k, v in tok.encoder.items()), 'vocab.json order differs from open_clip'
        out = {p: clip_ids(tok, p) for p in prompts}
    elif mode == 'bert-dir':
        lines = open(os.path.join(where, 'vocab.txt'), encoding='utf-8').read().split('\n')
        vocab = {t: i for i, t in enumerate(lines) if t}
        out = {p: bert_ids(vocab, p) for p in prompts}
    else:
        sys.exit(f'unknown mode {mode}')
    print(json.dumps(out))


if __name__ == '__main__':
    main()
