"""PyTorch reference for `npm run bench -- step`: one training step of the same model cxr-align
trains (grayscale CLIP-style ViT + label text branch, classification + contrastive + label-prior
losses, AdamW), on one thread. Prints one JSON line: {"ms": [per-step times], "params": N}; with
--profile 1 also "matmul_ms": the self time of one more step's matrix products under torch.profiler
(aten::mm, addmm, bmm, baddbmm and the patch-embedding convolution both ways, where BLAS runs).

Run as: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 vit_step.py --width 128 ...
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, w, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(w)
        self.attn = nn.MultiheadAttention(w, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(w)
        self.c_fc = nn.Linear(w, 4 * w)
        self.c_proj = nn.Linear(4 * w, w)

    def forward(self, x):
        a = self.ln_1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Model(nn.Module):
    def __init__(self, image, patch, w, layers, heads, dim, labels, text_dim, pool, rank):
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
        self.blocks = nn.ModuleList([Block(w, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, dim) * w ** -0.5)
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
        h = self.fc1(self.prompts)
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


def main():
    p = argparse.ArgumentParser()
    for k, d in [('image', 64), ('patch', 8), ('width', 128), ('layers', 4), ('heads', 4), ('dim', 128), ('labels', 14), ('batch', 32), ('steps', 5), ('warmup', 2), ('threads', 1)]:
        p.add_argument('--' + k, type=int, default=d)
    p.add_argument('--pool', default='tok', choices=['tok', 'avg', 'spatial'])
    p.add_argument('--rank', type=int, default=16)
    p.add_argument('--image-norm', type=int, default=0)
    p.add_argument('--profile', type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model(a.image, a.patch, a.width, a.layers, a.heads, a.dim, a.labels, a.dim, a.pool, a.rank)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    x = torch.randn(a.batch, 1, a.image, a.image)
    raw = torch.randint(0, 2, (a.batch, a.labels)).float()
    mask = torch.ones_like(raw)
    groups = torch.tensor([hash(tuple(r.tolist())) % (2 ** 31) for r in raw])
    S = torch.eye(a.labels)
    for _ in range(a.warmup):
        step(model, opt, x, raw, mask, groups, S, a.image_norm)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step(model, opt, x, raw, mask, groups, S, a.image_norm)
        times.append((time.perf_counter() - t) * 1000)
    out = {'ms': times, 'params': sum(q.numel() for q in model.parameters()), 'torch': torch.__version__, 'threads': torch.get_num_threads()}
    if a.profile:
        try:
            out['matmul_ms'] = matmul_ms(lambda: step(model, opt, x, raw, mask, groups, S, a.image_norm))
        except Exception as e:  # the step times stand without the split
            out['profile_error'] = repr(e)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
