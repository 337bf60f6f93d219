"""PyTorch replica of the tiny preset's training on synthetic data, for fast ablations
(`npm run bench -- synth --replica JSON`): the same forward pass (grayscale ViT, spatial readout,
cosine classifier to learnable label prompts through the text head), open_clip init, masked BCE /
(N * L), soft multi-positive InfoNCE, the label prior against the identity, AdamW (no decay on
norms, biases, embeddings), warmup + cosine, clipping at norm 1. Not bit-identical to the trainer
(its own data order and init stream), but it reproduces the trainer's per-label behaviour at about
25 s per 3-epoch run on one thread instead of minutes.

Input: DATA.{train,test}.img (uint8 n*S*S) and DATA.{train,test}.lab (float32 n*14, NaN blank).
Options: one JSON object overriding CFG below. Variant knobs used in docs/results.md:
  pool spatial|avg|avgln|tok|max|flat|flatr|sp|lq|attn, rank, stem linear|mlp|conv|convbn|convin|convnone,
  cnn 1, imgnorm 0|1, posstd, sincos, clsscale, lnpre 0|1, stembias, posall, biasinit, head text|linear,
  blank mask|zeros.
Prints one JSON line: {"cfg", "mean", "secs", "auroc": [per label], "train_auroc": [per label]}.
"""
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CFG = dict(epochs=3, batch=32, lr=1e-3, warmup=20, wd=0.05, clip=1.0, wcls=1.0, wcon=0.5, wprior=0.1, blank='mask',
           pool='spatial', patch=8, width=128, layers=4, heads=4, dim=128, seed=0, data='', head='text', stem='linear',
           threads=1, lnpre=1, minlr=0.1, imgnorm=1, posstd=1.0, clsscale=30.0, size=64, labels=14)
cfg = dict(CFG)
cfg.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
torch.set_num_threads(cfg['threads'])
torch.manual_seed(cfg['seed'])
L, S = cfg['labels'], cfg['size']
W, P, D = cfg['width'], cfg['patch'], cfg['dim']
G = (S // P) ** 2


def load(split):
    img = np.fromfile(f"{cfg['data']}.{split}.img", dtype=np.uint8)
    lab = np.fromfile(f"{cfg['data']}.{split}.lab", dtype=np.float32)
    n = lab.size // L
    return torch.tensor(img.reshape(n, 1, S, S)), torch.tensor(lab.reshape(n, L))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(W), nn.LayerNorm(W)
        self.attn = nn.MultiheadAttention(W, cfg['heads'], batch_first=True)
        self.c_fc, self.c_proj = nn.Linear(W, 4 * W), nn.Linear(4 * W, W)
        proj_std = W ** -0.5 * (2 * cfg['layers']) ** -0.5
        for w, std in [(self.attn.in_proj_weight, W ** -0.5), (self.attn.out_proj.weight, proj_std),
                       (self.c_fc.weight, (2 * W) ** -0.5), (self.c_proj.weight, proj_std)]:
            nn.init.normal_(w, std=std)
        for b in [self.attn.in_proj_bias, self.attn.out_proj.bias, self.c_fc.bias, self.c_proj.bias]:
            nn.init.zeros_(b)

    def forward(self, x):
        a = self.ln_1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


def conv_stem(norm):
    layers, c, k, chans, i = [], 1, P, [W // 8, W // 4, W // 2, W], 0
    while k > 1:
        n = {'convbn': nn.BatchNorm2d(chans[i]), 'convin': nn.GroupNorm(chans[i], chans[i]),
             'convnone': nn.Identity()}.get(norm, nn.GroupNorm(1, chans[i]))
        layers += [nn.Conv2d(c, chans[i], 3, 2, 1), n, nn.GELU()]
        c, k, i = chans[i], k // 2, i + 1
    return nn.Sequential(*layers, nn.Conv2d(c, W, 1))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        sc = W ** -0.5
        if cfg['stem'] == 'linear':
            self.conv1 = nn.Conv2d(1, W, P, P, bias=False)
            nn.init.normal_(self.conv1.weight, std=1 / P)
        elif cfg['stem'] == 'mlp':
            self.conv1 = nn.Sequential(nn.Conv2d(1, 4 * W, P, P), nn.GELU(), nn.Conv2d(4 * W, W, 1))
        else:
            self.conv1 = conv_stem(cfg['stem'])
        self.stem_bias = nn.Parameter(torch.randn(W) * cfg.get('stembias', 0))
        self.class_embedding = nn.Parameter(torch.randn(W) * sc)
        self.positional_embedding = nn.Parameter(torch.randn(G + 1, W) * (cfg['posstd'] or sc))
        if cfg.get('sincos'):
            g, d4 = S // P, W // 4
            om = 1.0 / (10000 ** (torch.arange(d4).float() / d4))
            ys, xs = torch.meshgrid(torch.arange(g).float(), torch.arange(g).float(), indexing='ij')
            oy, ox = ys.flatten()[:, None] * om, xs.flatten()[:, None] * om
            with torch.no_grad():
                self.positional_embedding[1:] = torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1) * cfg['sincos']
                self.positional_embedding[0] = 0
        self.ln_pre, self.ln_post = nn.LayerNorm(W), nn.LayerNorm(W)
        self.blocks = nn.ModuleList([Block() for _ in range(cfg['layers'])])
        self.proj = nn.Parameter(torch.randn(W, D) * sc)
        self.prompts = nn.Parameter(torch.randn(3 * L, D))
        self.fc1, self.fc2 = nn.Linear(D, D), nn.Linear(D, D)
        nn.init.normal_(self.fc1.weight, std=D ** -0.5)
        nn.init.normal_(self.fc2.weight, std=D ** -0.5 * 0.1)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.cls_log_scale = nn.Parameter(torch.tensor(math.log(cfg['clsscale'])))
        self.cls_bias = nn.Parameter(torch.zeros(L))
        self.lin = nn.Linear(D, L)
        self.flat = nn.Linear(G * W, D)
        r = cfg.get('rank', 16)
        self.flatr1 = nn.Linear(W, r, bias=False)
        self.flatr2 = nn.Linear(G * r, D)
        self.flatw = nn.Linear(G * r, W)
        nn.init.normal_(self.flatr1.weight, std=W ** -0.5)
        nn.init.normal_(self.flatw.weight, std=(G * r) ** -0.5)
        nn.init.zeros_(self.flatw.bias)
        self.queries = nn.Parameter(torch.randn(cfg.get('nq', L), W) * sc)  # attn / lq readouts
        self.spatial = nn.Parameter(torch.zeros(G, L))  # sp readout
        if cfg.get('cnn'):
            ls, c = [], 1
            for i, ch in enumerate([32, 64, 128, W]):
                ls += [nn.Conv2d(c, ch, 3, 2 if i < 3 else 1, 1), nn.BatchNorm2d(ch), nn.ReLU()]
                c = ch
            self.cnn = nn.Sequential(*ls)
        self.per_label = None

    def encode_image(self, x):
        if cfg.get('cnn'):
            return self.cnn(x).mean((2, 3)) @ self.proj
        x = self.conv1(x).flatten(2).transpose(1, 2) + self.stem_bias
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        if cfg['lnpre']:
            x = self.ln_pre(x)
        for i, b in enumerate(self.blocks):
            if cfg.get('posall') and i > 0:
                x = x + self.positional_embedding
            x = b(x)
        pool = cfg['pool']
        if pool == 'tok':
            return self.ln_post(x[:, 0]) @ self.proj
        if pool == 'avgln':
            return self.ln_post(x[:, 1:].mean(1)) @ self.proj
        h = self.ln_post(x)[:, 1:]
        if pool == 'flat':
            return self.flat(h.flatten(1))
        if pool == 'spatial':
            return self.flatw(self.flatr1(h).flatten(1)) @ self.proj
        if pool == 'flatr':
            return self.flatr2(self.flatr1(h).flatten(1))
        if pool == 'max':
            return h.max(1)[0] @ self.proj
        if pool == 'attn':
            a = torch.softmax(h @ self.queries.T * W ** -0.5, 1)
            return (a.transpose(1, 2) @ h).mean(1) @ self.proj
        if pool in ('lq', 'sp'):
            a = torch.softmax(h @ self.queries.T * W ** -0.5, 1) if pool == 'lq' else torch.softmax(self.spatial, 0)[None]
            self.per_label = (a.transpose(1, 2) @ h) @ self.proj
        return h.mean(1) @ self.proj

    def encode_text(self):
        h = self.fc1(self.prompts)
        t = h + self.fc2(F.gelu(h))
        return t[:L], t[L:2 * L], t[2 * L:]

    def logits(self, z):
        if cfg['head'] == 'linear':
            return self.lin(z)
        names = F.normalize(self.encode_text()[0], dim=-1)
        if self.per_label is not None:
            cos = (F.normalize(self.per_label, dim=-1) * names[None]).sum(-1)
        else:
            cos = F.normalize(z, dim=-1) @ names.T
        return self.cls_log_scale.exp() * cos + self.cls_bias


def to_input(x):
    x = (x.float() / 255 - 0.5) / 0.25
    if cfg['imgnorm']:
        x = (x - x.mean((1, 2, 3), keepdim=True)) / x.var((1, 2, 3), unbiased=False, keepdim=True).add(1e-6 * 16).sqrt()
    return x


def auroc(s, y):
    keep = (y == 1) | (y == 0)
    s, y = s[keep], y[keep]
    if y.sum() == 0 or y.sum() == len(y):
        return None
    p, q = s[y == 1][:, None], s[y == 0][None, :]
    return ((p > q).float().sum() + 0.5 * (p == q).float().sum()).item() / (p.numel() * q.numel())


def main():
    xtr, ytr = load('train')
    xte, yte = load('test')
    m = Model()
    if cfg.get('biasinit'):
        lab = ((ytr == 1) | (ytr == 0)).float()
        p = ((ytr == 1).float().sum(0) / lab.sum(0).clamp(min=1)).clamp(0.01, 0.99)
        with torch.no_grad():
            m.cls_bias.copy_(torch.log(p / (1 - p)))
            m.lin.bias.copy_(torch.log(p / (1 - p)))
    decay = [p for n, p in m.named_parameters() if p.ndim >= 2 and 'embedding' not in n and 'prompts' not in n]
    rest = [p for n, p in m.named_parameters() if not (p.ndim >= 2 and 'embedding' not in n and 'prompts' not in n)]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg['wd']}, {'params': rest, 'weight_decay': 0}],
                            lr=cfg['lr'], betas=(0.9, 0.98), eps=1e-6)
    n, B = len(xtr), cfg['batch']
    per_epoch = n // B
    total = per_epoch * cfg['epochs']

    def lr_at(step):
        if step <= cfg['warmup']:
            return cfg['lr'] * step / cfg['warmup']
        t = min(1, (step - cfg['warmup']) / max(1, total - cfg['warmup']))
        low = cfg['lr'] * cfg['minlr']
        return low + (cfg['lr'] - low) * 0.5 * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(cfg['seed'] + 1)
    t0, step = time.time(), 0
    for _ in range(cfg['epochs']):
        perm = torch.randperm(n, generator=gen)
        for s in range(per_epoch):
            idx = perm[s * B:(s + 1) * B]
            raw = ytr[idx]
            mask = ((raw == 1) | (raw == 0) | (torch.isnan(raw) & (cfg['blank'] == 'zeros'))).float()
            tgt = (raw == 1).float()
            m.per_label = None
            z = m.encode_image(to_input(xtr[idx]))
            bce = F.binary_cross_entropy_with_logits(m.logits(z), tgt, reduction='none')
            loss = cfg['wcls'] * (bce * mask).sum() / bce.numel()
            if cfg['head'] == 'text' and cfg['wcon'] > 0:
                _, pos, neg = m.encode_text()
                t = ((tgt * mask) @ pos + ((1 - tgt) * mask) @ neg) / mask.sum(1, keepdim=True).clamp(min=1)
                sim = m.logit_scale.exp().clamp(max=100) * F.normalize(z, dim=-1) @ F.normalize(t, dim=-1).T
                keys = [tuple('n' if math.isnan(v) else v for v in r.tolist()) for r in raw]
                gt = torch.tensor([[1.0 if a == b else 0.0 for b in keys] for a in keys])
                gt = gt / gt.sum(1, keepdim=True)
                con = -(gt * F.log_softmax(sim, 1)).sum() / (2 * B) - (gt * F.log_softmax(sim.T, 1)).sum() / (2 * B)
                loss = loss + cfg['wcon'] * con
            if cfg['head'] == 'text' and cfg['wprior'] > 0:
                tn = F.normalize(m.encode_text()[0], dim=-1)
                loss = loss + cfg['wprior'] * ((tn @ tn.T - torch.eye(L)) ** 2).mean()
            step += 1
            for g in opt.param_groups:
                g['lr'] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg['clip'] > 0:
                torch.nn.utils.clip_grad_norm_(m.parameters(), cfg['clip'])
            opt.step()
    m.eval()

    def scores(x):
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 128):
                m.per_label = None
                out.append(m.logits(m.encode_image(to_input(x[i:i + 128]))))
        return torch.cat(out)

    te, tr = scores(xte), scores(xtr)
    a = [auroc(te[:, k], yte[:, k]) for k in range(L)]
    ok = [v for v in a if v is not None]
    rnd = lambda xs: [None if v is None else round(v, 3) for v in xs]
    print(json.dumps({'cfg': cfg, 'mean': round(sum(ok) / len(ok), 4), 'secs': round(time.time() - t0),
                      'auroc': rnd(a), 'train_auroc': rnd([auroc(tr[:, k], ytr[:, k]) for k in range(L)])}), flush=True)


if __name__ == '__main__':
    main()
