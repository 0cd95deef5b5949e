"""One-off record (2026-11-30, stop 21): frame 0 of a multi-digit prompt composed of
single-digit frame 0s, against the card's joint frame 0.

24 random digit sets (12 pairs, 12 triples, distinct digits, numpy seed 7), stream seeds
100 + i, the card's sampling. ``composite``: each named digit's frame 0 drawn alone
("digit 3", 4 seeds per digit, the one overlapping the digits already placed least), laid
over each other by the pixel maximum and folded into a session with the whole prompt,
which draws every later frame; ``baseline``: the product's joint stream. Scored by the
project's classifier at frame 0, frames 0-19 and the last 20 frames. Results:
docs/demo-training.md ("Per-digit layers"), JSON in training/demo-v3/probes/
(multi-digit-24x200-*.json). Run from the repository root:

    .venv/bin/python training/demo-v3/scripts/composite_frame0.py 24 200 composite
"""
import json
import sys
import time

import numpy as np
import torch

from pomstream.model.checkpoint import load_model
from pomstream.model.data import prompt_for
from pomstream.model.metrics import average_scores, score_video
from pomstream.model.streaming import StreamGenerator

torch.set_num_threads(1)
P = dict(steps=8, first_steps=16, guidance=6.0, first_guidance=4.0, sampler="euler")
n, frames, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tries = int(sys.argv[4]) if len(sys.argv) > 4 else 4
rng = np.random.default_rng(7)
sets = [[int(d) for d in rng.choice(10, size=2 + (i % 2), replace=False)] for i in range(n)]
gen = StreamGenerator(load_model("demo"))
t0 = time.time()
sessions = [gen.session(prompt_for(s), seed=100 + i, **P) for i, s in enumerate(sets)]
if mode == "composite":
    comp = np.zeros((n, 64, 64), np.uint8)
    overlaps = []
    for k in range(3):
        idx = [i for i, s in enumerate(sets) if len(s) > k]
        # candidates: `tries` seeds per digit, one batched frame-0 call
        cand = [gen.session(f"digit {sets[i][k]}", seed=1000 * (k + 1) + 10 * i + j, **P)
                for i in idx for j in range(tries)]
        out = np.stack(gen.step(cand))[..., 0].reshape(len(idx), tries, 64, 64)
        for r, i in enumerate(idx):
            ink = comp[i] > 64
            # dilate the composite's ink by 2 px
            d = ink.copy()
            for dy in (-2, -1, 0, 1, 2):
                for dx in (-2, -1, 0, 1, 2):
                    d |= np.roll(np.roll(ink, dy, 0), dx, 1)
            ov = [(d & (out[r, j] > 64)).sum() for j in range(tries)]
            j = int(np.argmin(ov))
            overlaps.append(int(ov[j]))
            comp[i] = np.maximum(comp[i], out[r, j])
    gen.fold(sessions, comp)
    first = [comp]
else:
    first = [np.stack(gen.step(sessions))[..., 0]]
    overlaps = []
vids = [[f] for f in first[0]]
for _f in range(1, frames):
    out = gen.step(sessions)
    for v, fr in zip(vids, out, strict=True):
        v.append(fr[..., 0].copy())
vids = [np.stack(v) for v in vids]
res = {"mode": mode, "n": n, "frames": frames, "tries": tries, "sets": sets,
       "seconds": round(time.time() - t0), "overlap_px": overlaps}
for a, b in ((0, 1), (0, 20), (frames - 20, frames)):
    sc = [score_video(v[a:b], s) for v, s in zip(vids, sets, strict=True)]
    res[f"w{a}_{b}"] = {k: round(v, 3) for k, v in average_scores(sc).items()}
    for c in (2, 3):
        acc = [x["prompt_accuracy"] for x, s in zip(sc, sets, strict=True) if len(s) == c]
        res[f"w{a}_{b}"][f"acc{c}"] = round(float(np.mean(acc)), 3)
print(json.dumps(res))
