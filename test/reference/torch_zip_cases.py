#!/usr/bin/env python3
"""Writes PyTorch checkpoints for test/shared/torch-zip.test.ts with torch.save, and what they hold.

Usage: python3 test/reference/torch_zip_cases.py OUT_DIR
Writes OUT_DIR/{plain,dtypes,views,training,evil,notdict}.bin and prints one JSON line: for each file
the tensors' names, shapes and values as float32 lists (the reader must give exactly these).
"""
import json, os, sys
from collections import OrderedDict

import torch

out = sys.argv[1]
g = torch.Generator().manual_seed(0)
expect = {}


def save(name, obj, tensors):
    torch.save(obj, os.path.join(out, name + '.bin'))
    expect[name] = {k: {'shape': list(v.shape), 'values': v.float().flatten().tolist()} for k, v in tensors.items()}


# A module's state dict: an OrderedDict with _metadata, Parameters detached to tensors.
m = torch.nn.Sequential(OrderedDict(fc=torch.nn.Linear(3, 2), ln=torch.nn.LayerNorm(2)))
sd = m.state_dict()
save('plain', sd, sd)

d = OrderedDict(
    half=torch.randn(2, 3, generator=g).half(),
    bf=torch.randn(4, generator=g).bfloat16(),
    double=torch.randn(2, 2, generator=g).double(),
    scalar=torch.tensor(3.5),
    empty=torch.zeros(0, 4),
)
save('dtypes', d, d)

# Views: a transpose (strides), a slice (storage offset), two tensors sharing one storage.
base = torch.randn(4, 5, generator=g)
v = OrderedDict(t=base.t(), rows=base[1:3], col=base[:, 2], whole=base)
save('views', v, v)

# A training checkpoint: {'epoch', 'state_dict': {'module.<name>': tensor}} (DistributedDataParallel names).
inner = OrderedDict(('module.' + k, t) for k, t in sd.items())
torch.save({'epoch': 3, 'name': 'run', 'state_dict': inner}, os.path.join(out, 'training.bin'))
expect['training'] = expect['plain']


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned > ' + os.path.join(out, 'PWNED'),))


torch.save(OrderedDict(w=torch.ones(2), x=Evil()), os.path.join(out, 'evil.bin'))
torch.save([torch.ones(2)], os.path.join(out, 'notdict.bin'))
print(json.dumps(expect))
