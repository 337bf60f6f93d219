#!/usr/bin/env python3
"""PyTorch reference of the two text towers, for test/model/text/towers.test.ts.

Usage: python3 test/reference/text_towers.py IN.json  (prints one JSON line)

IN.json: a list of cases {"shape": {...the TS tower shape...}, "state": {name: {"shape": [...],
"data": [...]}}, "ids": [[token ids padded to the full context]]}. For each case it Builds a plain torch.nn module tree with
open_clip's names (CLIP's TextTransformer as the CLIP class holds it; HFTextEncoder over Hugging
Face's BertModel), loads the state dict strictly (every name and shape must match) and returns
the text embeddings of the rows: [{"embeddings": [[...]]}, ...].
"""
import json, math, sys
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, act):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([('c_fc', nn.Linear(width, 4 * width)), ('gelu', act()), ('c_proj', nn.Linear(4 * width, width))]))

    def forward(self, x, attn_mask):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, act):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, act) for _ in range(layers)])


class ClipText(nn.Module):
    """open_clip TextTransformer's tensors as the CLIP class names them (top level)."""

    def __init__(self, s):
        super().__init__()
        W = s['width']
        self.ctx = s['contextLength']
        self.token_embedding = nn.Embedding(s['vocabSize'], W)
        self.positional_embedding = nn.Parameter(torch.empty(self.ctx, W))
        self.transformer = Transformer(W, s['layers'], s['heads'], QuickGELU if s['quickGelu'] else nn.GELU)
        self.ln_final = nn.LayerNorm(W)
        self.text_projection = nn.Parameter(torch.empty(W, s['embedDim']))
        mask = torch.empty(self.ctx, self.ctx).fill_(float('-inf')).triu_(1)
        self.register_buffer('attn_mask', mask, persistent=False)

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        for r in self.transformer.resblocks:
            x = r(x, self.attn_mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]
        return pooled @ self.text_projection


class BertEmbeddings(nn.Module):
    def __init__(self, s):
        super().__init__()
        W = s['width']
        self.word_embeddings = nn.Embedding(s['vocabSize'], W, padding_idx=s['padId'])
        self.position_embeddings = nn.Embedding(s['maxPositions'], W)
        self.token_type_embeddings = nn.Embedding(s['typeVocabSize'], W)
        self.LayerNorm = nn.LayerNorm(W, eps=s['eps'])

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(torch.zeros_like(ids)))


class BertSelfAttention(nn.Module):
    def __init__(self, W, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(W, W), nn.Linear(W, W), nn.Linear(W, W)

    def forward(self, x, mask):
        B, T, W = x.shape
        d = W // self.heads
        split = lambda t: t.view(B, T, self.heads, d).permute(0, 2, 1, 3)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
        ctx = F.softmax(scores, dim=-1) @ v
        return ctx.permute(0, 2, 1, 3).reshape(B, T, W)


class DenseNorm(nn.Module):
    """BertSelfOutput / BertOutput: dense, residual, LayerNorm."""

    def __init__(self, n_in, W, eps):
        super().__init__()
        self.dense = nn.Linear(n_in, W)
        self.LayerNorm = nn.LayerNorm(W, eps=eps)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class BertAttention(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.self = BertSelfAttention(s['width'], s['heads'])
        self.output = DenseNorm(s['width'], s['width'], s['eps'])


class BertIntermediate(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.dense = nn.Linear(s['width'], s['intermediate'])


class BertLayer(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.attention = BertAttention(s)
        self.intermediate = BertIntermediate(s)
        self.output = DenseNorm(s['intermediate'], s['width'], s['eps'])

    def forward(self, x, mask):
        a = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(a)), a)


class BertEncoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(s) for _ in range(s['layers'])])


class BertPooler(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.dense = nn.Linear(W, W)


class BertModel(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.embeddings = BertEmbeddings(s)
        self.encoder = BertEncoder(s)
        if s['pooler'] == 'cls_pooler':  # add_pooling_layer only for open_clip's cls_pooler
            self.pooler = BertPooler(s['width'])


class HFTextEncoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.transformer = BertModel(s)
        W, D = s['width'], s['embedDim']
        if s['proj'] == 'linear':
            self.proj = nn.Linear(W, D, bias=False)
        elif s['proj'] == 'mlp':
            hid = (W + D) // 2
            self.proj = nn.Sequential(nn.Linear(W, hid, bias=False), nn.GELU(), nn.Linear(hid, D, bias=False))
        else:
            self.proj = nn.Identity()

    def forward(self, ids):
        keep = (ids != self.s['padId']).long()
        mask = (1.0 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
        x = self.transformer.embeddings(ids)
        for layer in self.transformer.encoder.layer:
            x = layer(x, mask)
        pool = self.s['pooler']
        if pool == 'mean_pooler':
            pooled = (x * keep.unsqueeze(-1)).sum(dim=1) / keep.sum(-1, keepdim=True)
        else:
            pooled = x[:, 0]
            if pool == 'cls_pooler':
                pooled = torch.tanh(self.transformer.pooler.dense(pooled))
        return self.proj(pooled)


class Text(nn.Module):
    """CustomTextCLIP's `text` attribute."""

    def __init__(self, s):
        super().__init__()
        self.text = HFTextEncoder(s)

    def forward(self, ids):
        return self.text(ids)


def embed(case):
    s = case['shape']
    model = ClipText(s) if s['kind'] == 'clip' else Text(s)
    state = {k: torch.tensor(v['data'], dtype=torch.float32).reshape(v['shape']) for k, v in case['state'].items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        return {'embeddings': model(torch.tensor(case['ids'], dtype=torch.long)).tolist()}


def main():
    torch.manual_seed(0)
    print(json.dumps([embed(case) for case in json.load(open(sys.argv[1]))]))


if __name__ == '__main__':
    main()
