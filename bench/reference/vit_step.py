"""PyTorch reference for `npm run bench -- step`: one training step of the same model cxr-align
trains (grayscale CLIP-style ViT + label text branch, classification + contrastive + label-prior
losses, AdamW), on one thread. Prints one JSON line: {"ms": [per-step times], "params": N}; with
--profile 1 also "matmul_ms": the self time of one more step's matrix products under torch.profiler
(aten::mm, addmm, bmm, baddbmm and the patch-embedding convolution both ways, where BLAS runs).
With --tokens FILE (JSON token rows, cut to the longest prompt) the prompts come from CLIP's text
transformer (open_clip TextTransformer: causal blocks, ln_final, argmax pooling, text_projection)
trained in the step, as `--text-tower finetune` does; --quick-gelu 1 puts QuickGELU in every MLP.
"cpu_ms": each timed step's CPU time (time.process_time), which a loaded machine inflates less.
Always also "gemm_gflops" (a [1024, 768] x [768, 3072] product, as the ViT's MLP does it) and
"blas" (the BLAS library the process loaded): a reference BLAS makes every step hundreds of times
slower. --budget-s S stops the run after S seconds with {"error": ...} and those two fields.

Run as: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 vit_step.py --width 128 ...
"""
import argparse
import json
import math
import os
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, w, heads, act=F.gelu):
        super().__init__()
        self.ln_1 = nn.LayerNorm(w)
        self.attn = nn.MultiheadAttention(w, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(w)
        self.c_fc = nn.Linear(w, 4 * w)
        self.c_proj = nn.Linear(4 * w, w)
        self.act = act

    def forward(self, x, mask=None):
        a = self.ln_1(x)
        x = x + self.attn(a, a, a, need_weights=False, attn_mask=mask)[0]
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


class TextTransformer(nn.Module):
    """open_clip's TextTransformer on token rows [N, T] (T <= context: causal, so rows cut to the longest prompt give the same output)."""

    def __init__(self, vocab, context, w, layers, heads, dim, act):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, w)
        self.positional_embedding = nn.Parameter(torch.randn(context, w) * 0.01)
        self.blocks = nn.ModuleList([Block(w, heads, act) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.randn(w, dim) * w ** -0.5)

    def forward(self, ids):
        T = ids.shape[1]
        mask = torch.full((T, T), float('-inf')).triu_(1)
        x = self.token_embedding(ids) + self.positional_embedding[:T]
        for b in self.blocks:
            x = b(x, mask)
        x = self.ln_final(x[torch.arange(x.shape[0]), ids.argmax(dim=-1)])
        return x @ self.text_projection


class Model(nn.Module):
    def __init__(self, image, patch, w, layers, heads, dim, labels, text_dim, pool, rank, act=F.gelu, text=None, text_tokens=None):
        super().__init__()
        tokens = (image // patch) ** 2 + 1
        self.pool = pool
        if pool == 'spatial':
            self.reduce = nn.Linear(w, rank, bias=False)
            self.map = nn.Linear((tokens - 1) * rank, w)
        self.conv1 = nn.Conv2d(1, w, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(tokens, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList([Block(w, heads, act) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, dim) * w ** -0.5)
        self.text, self.text_tokens = text, text_tokens
        if text is None:
            self.prompts = nn.Parameter(torch.randn(3 * labels, text_dim))
        self.fc1 = nn.Linear(text_dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.cls_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.cls_bias = nn.Parameter(torch.zeros(labels))
        self.labels = labels

    def encode_image(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding
        x = self.ln_pre(x)
        for b in self.blocks:
            x = b(x)
        if self.pool == 'spatial':
            return self.map(self.reduce(self.ln_post(x[:, 1:])).flatten(1)) @ self.proj
        if self.pool == 'avg':
            return self.ln_post(x[:, 1:]).mean(1) @ self.proj
        return self.ln_post(x[:, 0]) @ self.proj

    def encode_text(self):
        h = self.fc1(self.prompts if self.text is None else self.text(self.text_tokens))
        t = h + self.fc2(F.gelu(h))
        L = self.labels
        return t[:L], t[L:2 * L], t[2 * L:]


def step(model, opt, x, targets, mask, groups, S, image_norm):
    if image_norm:  # the CPU presets standardise each image
        x = (x - x.mean((1, 2, 3), keepdim=True)) / x.var((1, 2, 3), unbiased=False, keepdim=True).add(1e-6).sqrt()
    z = model.encode_image(x)
    names, pos, neg = model.encode_text()
    zn = F.normalize(z, dim=-1)
    logits = model.cls_log_scale.exp() * zn @ F.normalize(names, dim=-1).T + model.cls_bias
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    cls = (bce * mask).sum() / bce.numel()
    t = ((targets * mask) @ pos + ((1 - targets) * mask) @ neg) / mask.sum(1, keepdim=True).clamp(min=1)
    sim = model.logit_scale.exp().clamp(max=100) * zn @ F.normalize(t, dim=-1).T
    G = (groups[:, None] == groups[None, :]).float()
    G = G / G.sum(1, keepdim=True)
    con = -(G * F.log_softmax(sim, 1)).sum() / (2 * len(z)) - (G * F.log_softmax(sim.T, 1)).sum() / (2 * len(z))
    tn = F.normalize(names, dim=-1)
    prior = ((tn @ tn.T - S) ** 2).mean()
    loss = cls + 0.5 * con + 0.1 * prior
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


# The ops whose self time is BLAS (or oneDNN) work: the products tfjs counts as its matMuls.
MATMUL_OPS = {'aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::mkldnn_convolution', 'aten::convolution_backward'}


def matmul_ms(run):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1000


def blas_library():
    """The BLAS shared object this process mapped (Debian's alternatives pick it), e.g. libopenblas or the reference libblas."""
    try:
        with open('/proc/self/maps') as f:
            libs = {line.split()[-1] for line in f if 'blas' in line.lower() and '.so' in line}
        return ', '.join(sorted(os.path.realpath(x) for x in libs)) or 'none mapped'
    except OSError as e:
        return repr(e)


def gemm_gflops():
    a, b = torch.randn(1024, 768), torch.randn(768, 3072)
    torch.mm(a, b)
    t = time.perf_counter()
    torch.mm(a, b)
    return 2 * 1024 * 768 * 3072 / (time.perf_counter() - t) / 1e9


def main():
    p = argparse.ArgumentParser()
    for k, d in [('image', 64), ('patch', 8), ('width', 128), ('layers', 4), ('heads', 4), ('dim', 128), ('labels', 14), ('batch', 32), ('steps', 5), ('warmup', 2), ('threads', 1)]:
        p.add_argument('--' + k, type=int, default=d)
    p.add_argument('--pool', default='tok', choices=['tok', 'avg', 'spatial'])
    p.add_argument('--rank', type=int, default=16)
    p.add_argument('--image-norm', type=int, default=0)
    p.add_argument('--profile', type=int, default=0)
    p.add_argument('--quick-gelu', type=int, default=0)
    p.add_argument('--tokens', default=None)
    for k, d in [('vocab', 49408), ('context', 77), ('text-width', 512), ('text-layers', 12), ('text-heads', 8), ('budget-s', 0)]:
        p.add_argument('--' + k, type=int, default=d)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    env = {'gemm_gflops': gemm_gflops(), 'blas': blas_library()}
    if a.budget_s:
        def over(*_):
            print(json.dumps({'error': f'stopped after its budget of {a.budget_s} s', **env}))
            sys.stdout.flush()
            os._exit(0)
        signal.signal(signal.SIGALRM, over)
        signal.alarm(a.budget_s)
    act = quick_gelu if a.quick_gelu else F.gelu
    text = tokens = None
    if a.tokens:
        tokens = torch.tensor(json.load(open(a.tokens)), dtype=torch.long)
        text = TextTransformer(a.vocab, a.context, a.text_width, a.text_layers, a.text_heads, a.dim, act)
    model = Model(a.image, a.patch, a.width, a.layers, a.heads, a.dim, a.labels, a.dim, a.pool, a.rank, act, text, tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    x = torch.randn(a.batch, 1, a.image, a.image)
    raw = torch.randint(0, 2, (a.batch, a.labels)).float()
    mask = torch.ones_like(raw)
    groups = torch.tensor([hash(tuple(r.tolist())) % (2 ** 31) for r in raw])
    S = torch.eye(a.labels)
    for _ in range(a.warmup):
        step(model, opt, x, raw, mask, groups, S, a.image_norm)
    times, cpu = [], []
    for _ in range(a.steps):
        t, c = time.perf_counter(), time.process_time()
        step(model, opt, x, raw, mask, groups, S, a.image_norm)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    out = {'ms': times, 'cpu_ms': cpu, 'params': sum(q.numel() for q in model.parameters()), 'torch': torch.__version__, 'threads': torch.get_num_threads(), **env}
    if a.profile:
        try:
            out['matmul_ms'] = matmul_ms(lambda: step(model, opt, x, raw, mask, groups, S, a.image_norm))
        except Exception as e:  # the step times stand without the split
            out['profile_error'] = repr(e)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
