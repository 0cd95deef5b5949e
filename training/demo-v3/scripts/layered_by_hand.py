"""One-off record (2026-11-30, stop 21): a multi-digit prompt streamed as one
single-digit stream per digit, frames laid over each other by the pixel maximum.

The same 24 digit sets as composite_frame0.py; layer k of set i is the session
"digit d_k" with seed 100 + 10 i + k (the product's ``--layers digits``, added after
this measurement, seeds its layers with model.layers.layer_seed instead; its 32 x 1,000
evaluation is in training/demo-v3/eval-step15885-layers-1000.json). Results:
docs/demo-training.md ("Per-digit layers"). Run from the repository root:

    .venv/bin/python training/demo-v3/scripts/layered_by_hand.py 24 200
"""
import json
import sys
import time

import numpy as np
import torch

from pomstream.model.checkpoint import load_model
from pomstream.model.metrics import average_scores, score_video
from pomstream.model.streaming import StreamGenerator

torch.set_num_threads(1)
P = dict(steps=8, first_steps=16, guidance=6.0, first_guidance=4.0, sampler="euler")
n, frames = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(7)
sets = [[int(d) for d in rng.choice(10, size=2 + (i % 2), replace=False)] for i in range(n)]
gen = StreamGenerator(load_model("demo"))
t0 = time.time()
layers = [(i, gen.session(f"digit {d}", seed=100 + 10 * i + k, **P))
          for i, s in enumerate(sets) for k, d in enumerate(s)]
vids = [[] for _ in sets]
for _f in range(frames):
    out = gen.step([s for _, s in layers])
    comp = np.zeros((n, 64, 64), np.uint8)
    for (i, _), fr in zip(layers, out, strict=True):
        np.maximum(comp[i], fr[..., 0], out=comp[i])
    for v, c in zip(vids, comp, strict=True):
        v.append(c)
vids = [np.stack(v) for v in vids]
res = {"mode": "layered", "n": n, "frames": frames, "sets": sets,
       "seconds": round(time.time() - t0)}
for a, b in ((0, 1), (0, 20), (frames - 20, frames)):
    sc = [score_video(v[a:b], s) for v, s in zip(vids, sets, strict=True)]
    res[f"w{a}_{b}"] = {k: round(v, 3) for k, v in average_scores(sc).items()}
    for c in (2, 3):
        acc = [x["prompt_accuracy"] for x, s in zip(sc, sets, strict=True) if len(s) == c]
        res[f"w{a}_{b}"][f"acc{c}"] = round(float(np.mean(acc)), 3)
print(json.dumps(res))
