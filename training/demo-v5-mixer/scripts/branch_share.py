"""The prompt cross-PoM's share of the velocity: |v - v_without| / |v|.

v: the model's velocity on 32 real test frames (single frames, their own prompts) noised
to t = 0.3, 0.6, 0.9; v_without: the same with every block's cross-PoM adaLN layer zeroed
(the branch off). Run from the repository root:

    .venv/bin/python training/demo-v5-mixer/scripts/branch_share.py \
        runs/mixer-cpu/model_step3000.safetensors
"""
import copy
import sys

import numpy as np
import torch

from pomstream.model.checkpoint import load_model
from pomstream.model.data import MovingDigits
from pomstream.model.streaming import StreamGenerator

torch.set_num_threads(1)
gen = StreamGenerator(load_model(sys.argv[1]))
model = gen.model
off = copy.deepcopy(model)
for blk in off.blocks:
    torch.nn.init.zeros_(blk.cross_ada.weight)
    torch.nn.init.zeros_(blk.cross_ada.bias)
data, rng = MovingDigits("test", size=model.cfg.frame_size), np.random.default_rng(0)
clips = [data.sample(rng, 1) for _ in range(32)]
x0 = gen.autoencoder.encode(np.stack([c.frames[0] for c in clips]).astype(np.uint8))[:, None]
g = torch.Generator().manual_seed(0)
out = {}
for tv in (0.3, 0.6, 0.9):
    t = torch.full((32, 1), tv)
    noise = torch.randn(x0.shape, generator=g)
    xt = (1 - tv) * x0 + tv * noise
    cond = model.encode_prompts([c.prompt for c in clips])
    with torch.no_grad():
        v, v0 = model(xt, t, cond), off(xt, t, cond)
    out[tv] = round(float((v - v0).norm() / v.norm()), 4)
print(out)
