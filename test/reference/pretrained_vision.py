#!/usr/bin/env python3
"""A pretrained model directory in the real open_clip / hub layout, with random weights, and the
image embeddings PyTorch computes from it, for test/model/pretrained-vision.test.ts.

Usage: python3 test/reference/pretrained_vision.py OUT_DIR openai|biomedclip|timm-avg [SEED [IMAGES.json]]

Writes OUT_DIR/open_clip_config.json and OUT_DIR/open_clip_pytorch_model.bin (torch.save of a
state dict) for a small image tower (width 64, 2 layers, 2 heads, patch 8, 32 px):
  openai      open_clip's VisionTransformer (QuickGELU, ln_pre, LayerNorm eps 1e-5), names visual.*
  biomedclip  open_clip's TimmModel over timm's VisionTransformer as BiomedCLIP configures it
              (timm_pool '', timm_proj 'linear': class token after `norm`, eps 1e-6, no ln_pre,
              a patch-embedding bias, GELU), names visual.trunk.* and visual.head.proj.weight
  timm-avg    the same with timm_pool 'avg': TimmModel builds the trunk with its default pool
              (the class token: `norm` on every token, fc_norm an Identity), then
              reset_classifier(0, global_pool='avg'): the mean of the normed patch tokens
The module trees are written out here with plain torch.nn under those names (no open_clip or
timm needed). Prints one JSON line: the test images (uint8 gray, row-major) and their unit
embeddings with the checkpoint's own preprocessing (gray replicated to RGB, /255, per-channel
mean/std from preprocess_cfg), and exp(logit_scale). IMAGES.json (a list of such images) replaces
the built-in test images (the zero-shot test embeds a dataset split).
"""
import json, math, os, sys
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F

out, variant = sys.argv[1], sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
torch.manual_seed(seed)
W, LAYERS, HEADS, PATCH, SIZE, EMBED = 64, 2, 2, 8, 32, 16
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
TOKENS = (SIZE // PATCH) ** 2 + 1


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class OpenClipBlock(nn.Module):
    """open_clip's ResidualAttentionBlock: pre-norm, nn.MultiheadAttention (fused in_proj), c_fc / c_proj MLP."""

    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(W)
        self.attn = nn.MultiheadAttention(W, HEADS, batch_first=True)
        self.ln_2 = nn.LayerNorm(W)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(W, 4 * W), gelu=QuickGELU(), c_proj=nn.Linear(4 * W, W)))

    def forward(self, x):
        a = self.ln_1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.resblocks = nn.ModuleList([OpenClipBlock() for _ in range(LAYERS)])


class OpenClipVisionTransformer(nn.Module):
    """open_clip's VisionTransformer with pool_type 'tok', final_ln_after_pool False."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, W, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(W) * 0.5)
        self.positional_embedding = nn.Parameter(torch.randn(TOKENS, W) * 0.5)
        self.ln_pre = nn.LayerNorm(W)
        self.transformer = Transformer()
        self.ln_post = nn.LayerNorm(W)
        self.proj = nn.Parameter(torch.randn(W, EMBED) * W ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, W), x], 1) + self.positional_embedding
        x = self.ln_pre(x)
        for b in self.transformer.resblocks:
            x = b(x)
        return self.ln_post(x)[:, 0] @ self.proj


class TimmAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(W, 3 * W)
        self.proj = nn.Linear(W, W)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, HEADS, W // HEADS).permute(2, 0, 3, 1, 4)
        a = ((q * (W // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, W))


class TimmMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(W, 4 * W)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * W, W)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(W, eps=1e-6)
        self.attn = TimmAttention()
        self.norm2 = nn.LayerNorm(W, eps=1e-6)
        self.mlp = TimmMlp()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, W, PATCH, PATCH, bias=True)


class TimmVisionTransformer(nn.Module):
    """timm's VisionTransformer (class token, global_pool 'token', no pre-norm, no fc_norm), classifier removed."""

    def __init__(self, pool='token'):
        super().__init__()
        self.pool = pool
        self.cls_token = nn.Parameter(torch.randn(1, 1, W) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS, W) * 0.5)
        self.patch_embed = PatchEmbed()
        self.blocks = nn.ModuleList([TimmBlock() for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(W, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        x = self.norm(x)
        # timm's global_pool_nlc: 'token' the class token, 'avg' the mean of the tokens after the prefix.
        return x[:, 1:].mean(dim=1) if self.pool == 'avg' else x[:, 0]


class TimmModel(nn.Module):
    def __init__(self, pool='token'):
        super().__init__()
        self.trunk = TimmVisionTransformer(pool)
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.0), proj=nn.Linear(W, EMBED, bias=False)))

    def forward(self, x):
        return self.head(self.trunk(x))


class Clip(nn.Module):
    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


if variant == 'openai':
    model = Clip(OpenClipVisionTransformer())
    vision_cfg = {'image_size': SIZE, 'layers': LAYERS, 'width': W, 'head_width': W // HEADS, 'patch_size': PATCH}
    model_cfg = {'embed_dim': EMBED, 'quick_gelu': True, 'vision_cfg': vision_cfg}
elif variant in ('biomedclip', 'timm-avg'):
    model = Clip(TimmModel('avg' if variant == 'timm-avg' else 'token'))
    vision_cfg = {
        'timm_model_name': 'vit_base_patch16_224',
        'timm_model_pretrained': False,
        'timm_pool': 'avg' if variant == 'timm-avg' else '',
        'timm_proj': 'linear',
        'image_size': SIZE,
        'timm_model_kwargs': {'embed_dim': W, 'depth': LAYERS, 'num_heads': HEADS, 'patch_size': PATCH, 'img_size': SIZE},
    }
    model_cfg = {'embed_dim': EMBED, 'vision_cfg': vision_cfg}
else:
    sys.exit(f'unknown variant {variant}')

# Norms and biases away from their initial 1 / 0, so a misplaced one shows.
with torch.no_grad():
    for name, p in model.named_parameters():
        if 'ln' in name or 'norm' in name:
            p.copy_((1 if name.endswith('weight') else 0) + 0.2 * torch.randn_like(p))
        elif name.endswith('bias'):
            p.copy_(0.1 * torch.randn_like(p))
model.eval()

os.makedirs(out, exist_ok=True)
config = {'model_cfg': model_cfg, 'preprocess_cfg': {'mean': MEAN, 'std': STD}}
with open(os.path.join(out, 'open_clip_config.json'), 'w') as f:
    json.dump(config, f, indent=2)
torch.save(model.state_dict(), os.path.join(out, 'open_clip_pytorch_model.bin'))

# Test images: noise, a gradient, a flat gray, a bright disc.
g = torch.Generator().manual_seed(seed + 1)
yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing='ij')
images = torch.stack([
    torch.randint(0, 256, (SIZE, SIZE), generator=g),
    (xx * 255 // (SIZE - 1)),
    torch.full((SIZE, SIZE), 128),
    torch.where((xx - 16) ** 2 + (yy - 12) ** 2 < 64, 230, 40),
]).to(torch.uint8)
if len(sys.argv) > 4:
    images = torch.tensor(json.load(open(sys.argv[4])), dtype=torch.uint8).view(-1, SIZE, SIZE)
x = images.float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
with torch.no_grad():
    emb = F.normalize(model.visual(x), dim=-1)
print(json.dumps({'size': SIZE, 'images': images.flatten(1).tolist(), 'embeddings': emb.tolist(),
                  'logit_scale': model.logit_scale.exp().item()}))
