"""One-off record (2026-11-30): are the two digits of a pair drawn in the order named?

Frame 0 of the probe's two-digit prompts (``pomstream probe --pairs 48``: the same 48
pairs x 2 seeds, named smaller digit first), the card's sampling. ``exact``: the frame's
digit set is the prompt's (as the probe). Frames whose ink is two separate blobs (ink >
64, joined within 2 px, each >= 10% of the ink) have each blob classified alone;
``in_order`` / ``reversed``: the share of those whose blobs, left to right by their left
edges, show the first and the second digit named / the second and the first (equal for a
model that ignores the order); ``same_twice``: the share whose two blobs read as the same
digit (the pair's binding failure: "6 and 7" drawn as two 6s). On real left-to-right
frames (test digits) 43% split into two blobs and 97% of those read in order. From the
repository root:

    .venv/bin/python training/demo-v7-order/scripts/pair_order.py MODEL [--threads 1]
"""
import argparse
import json

import numpy as np
import torch
from scipy import ndimage

from pomstream.model.checkpoint import load_model
from pomstream.model.classifier import load_classifier, predict_digits
from pomstream.model.data import prompt_for
from pomstream.model.probes import frame0, pair_prompts
from pomstream.model.streaming import StreamGenerator

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--pairs", type=int, default=48)
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
pairs = pair_prompts(args.pairs)  # the probe's two-digit test
frames = frame0(StreamGenerator(load_model(args.model)), [prompt_for(p) for p in pairs],
                range(2), steps=8, first_steps=16, guidance=6.0, first_guidance=4.0,
                sampler="euler")
frames = frames.reshape(-1, *frames.shape[2:])  # (pairs x 2 seeds, H, W) uint8
classifier = load_classifier()
present = predict_digits(frames, classifier) > 0.5
wanted = [p for p in pairs for _ in range(2)]
exact = [set(np.flatnonzero(row)) == set(p) for row, p in zip(present, wanted, strict=True)]


def split_two(frame, thresh=64, grow=2):
    """The two blobs of a frame, left edge first, or None if its ink is not two blobs."""
    ink = frame > thresh
    labels, n = ndimage.label(ndimage.binary_dilation(ink, iterations=grow))
    if n < 2:
        return None
    sizes = ndimage.sum(ink, labels, index=range(1, n + 1))
    big = [i + 1 for i in np.argsort(-sizes) if sizes[i] >= 0.1 * ink.sum()]
    if len(big) != 2:
        return None
    parts = sorted(((np.flatnonzero((labels == b).any(0))[0], np.where(labels == b, frame, 0))
                    for b in big), key=lambda part: part[0])
    return parts[0][1], parts[1][1]


blobs, which = [], []
for i, frame in enumerate(frames):
    two = split_two(frame)
    if two is not None:
        blobs += list(two)
        which.append(i)
n = len(which)
result = {"model": args.model, "frames": len(frames), "exact": sum(exact) / len(frames),
          "two_blobs": n / len(frames), "in_order": None, "reversed": None, "same_twice": None}
if n:  # an untrained model may draw no two blobs at all
    top = predict_digits(np.stack(blobs), classifier).argmax(-1).reshape(-1, 2).tolist()
    named = [tuple(wanted[i]) for i in which]
    result["in_order"] = sum(tuple(t) == w for t, w in zip(top, named, strict=True)) / n
    result["reversed"] = sum(tuple(t) == w[::-1] for t, w in zip(top, named, strict=True)) / n
    result["same_twice"] = sum(a == b for a, b in top) / n
print(json.dumps(result))
