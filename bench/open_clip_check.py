#!/usr/bin/env python3
"""Load a `coordinator export` file into open_clip's VisionTransformer with PyTorch and run it.

Usage: python3 bench/open_clip_check.py MODEL.safetensors [--heads H]

Checks that every `visual.*` tensor has the name and shape open_clip's VisionTransformer expects
(load_state_dict strict=True), that the grayscale stem exported as an RGB kernel computes the gray
convolution when the image is replicated to RGB, and that a forward pass gives finite embeddings.
Needs only torch (Debian's python3-torch); uses the real open_clip when `import open_clip` works
or OPEN_CLIP_SRC names an unpacked open_clip_torch wheel, otherwise a module tree with
open_clip's names and parameter shapes built from torch.nn. Prints one JSON line.
"""
import argparse, json, math, os, struct, sys, types
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop('__metadata__', {})
    out = {}
    for name, t in header.items():
        assert t['dtype'] == 'F32', (name, t['dtype'])
        a, b = t['data_offsets']
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(t['shape']) if b > a else torch.zeros(t['shape'])
    return out, meta


def open_clip_vit():
    try:
        from open_clip.transformer import VisionTransformer
        return VisionTransformer, 'open_clip (installed)'
    except ImportError:
        pass
    src = os.environ.get('OPEN_CLIP_SRC')
    if src:
        # The wheel's utils module imports torchvision for FrozenBatchNorm2d only; the ViT does not use it.
        if 'torchvision' not in sys.modules:
            tv, ops, misc = (types.ModuleType(n) for n in ('torchvision', 'torchvision.ops', 'torchvision.ops.misc'))
            misc.FrozenBatchNorm2d = type('FrozenBatchNorm2d', (), {})
            tv.ops, ops.misc = ops, misc
            sys.modules.update({'torchvision': tv, 'torchvision.ops': ops, 'torchvision.ops.misc': misc})
        pkg = types.ModuleType('open_clip')
        pkg.__path__ = [os.path.join(src, 'open_clip')]
        sys.modules['open_clip'] = pkg
        from open_clip.transformer import VisionTransformer
        return VisionTransformer, f'open_clip from {src}'
    return MirrorViT, 'torch.nn mirror of open_clip names (open_clip not importable)'


class MirrorBlock(nn.Module):
    def __init__(self, width, heads, mlp_ratio):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([('c_fc', nn.Linear(width, int(width * mlp_ratio))), ('gelu', nn.GELU()), ('c_proj', nn.Linear(int(width * mlp_ratio), width))]))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class MirrorViT(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, mlp_ratio, output_dim):
        super().__init__()
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([MirrorBlock(width, heads, mlp_ratio) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for b in self.transformer.resblocks:
            x = b(x)
        return self.ln_post(x[:, 0]) @ self.proj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('file')
    ap.add_argument('--heads', type=int, default=0, help='attention heads (shapes do not depend on it; default: width/64 or 1)')
    a = ap.parse_args()
    tensors, meta = read_safetensors(a.file)
    visual = {k[len('visual.'):]: v for k, v in tensors.items() if k.startswith('visual.')}
    width = visual['class_embedding'].shape[0]
    patch = visual['conv1.weight'].shape[-1]
    grid = math.isqrt(visual['positional_embedding'].shape[0] - 1)
    layers = len({k.split('.')[2] for k in visual if k.startswith('transformer.resblocks.')})
    mlp_ratio = visual['transformer.resblocks.0.mlp.c_fc.weight'].shape[0] / width
    output_dim = visual['proj'].shape[1]
    heads = a.heads or (width // 64 if width % 64 == 0 else 1)
    Vit, impl = open_clip_vit()
    model = Vit(image_size=grid * patch, patch_size=patch, width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio, output_dim=output_dim)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in visual.items()}
    problems = [f'{k}: open_clip {want.get(k)}, file {got.get(k)}' for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if problems:
        print(json.dumps({'ok': False, 'impl': impl, 'problems': problems}))
        sys.exit(1)
    model.load_state_dict(visual, strict=True)
    model.eval()
    torch.manual_seed(0)
    gray = torch.rand(2, 1, grid * patch, grid * patch)
    rgb = gray.expand(-1, 3, -1, -1)
    with torch.no_grad():
        conv_rgb = model.conv1(rgb)
        conv_gray = F.conv2d(gray, visual['conv1.weight'].sum(1, keepdim=True), stride=patch)
        conv_err = ((conv_rgb - conv_gray).abs().max() / conv_gray.abs().max().clamp_min(1e-30)).item()
        out = model(rgb)
        if isinstance(out, tuple):
            out = out[0]
    ok = conv_err < 1e-5 and tuple(out.shape) == (2, output_dim) and bool(torch.isfinite(out).all())
    print(json.dumps({'ok': ok, 'impl': impl, 'tensors': len(visual), 'width': width, 'layers': layers, 'patch': patch,
                      'image_size': grid * patch, 'output_dim': output_dim, 'conv1_gray_vs_rgb_max_rel_diff': conv_err,
                      'embedding_shape': list(out.shape), 'step': meta.get('cxr_align.step')}))
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
