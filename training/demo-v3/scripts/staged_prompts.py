"""One-off record (2026-11-30): staged prompts for digit pairs, not adopted.

Frame 0 is drawn with the first digit's prompt alone ("digit 3"); the others join the
prompt one every --every frames ("digits 3 and 7" from frame 1 with --every 1), so the
model, trained on clips where a prompted digit appears mid-clip (restoring data), adds
the second digit to a frame that already holds the first. --every 0: the whole prompt
from frame 0 (what the product does). 45 digit sets x 2 seeds, the card's sampling,
exact set and recall per frame by the project's classifier. Results:
docs/demo-training.md, "Staged prompts". Run from the repository root:

    .venv/bin/python training/demo-v3/scripts/staged_prompts.py --every 1
"""
import argparse
import json

import numpy as np
import torch

from pomstream.model.checkpoint import load_model
from pomstream.model.classifier import load_classifier, predict_digits
from pomstream.model.data import prompt_for
from pomstream.model.streaming import StreamGenerator

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="demo")
ap.add_argument("--every", type=int, default=0, help="0: full prompt from frame 0")
ap.add_argument("--n", type=int, default=2)
ap.add_argument("--frames", type=int, default=16)
ap.add_argument("--count", type=int, default=45)
ap.add_argument("--seeds", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(1)
gen = StreamGenerator(load_model(args.model))
clf = load_classifier()
rng = np.random.default_rng(0)
sets = [[int(d) for d in rng.choice(10, args.n, replace=False)] for _ in range(args.count)]
rows = [(p, s) for p in sets for s in range(args.seeds)]
params = dict(steps=8, first_steps=16, guidance=6.0, first_guidance=4.0, sampler="euler")
def prompt_at(p, f):
    k = len(p) if args.every == 0 else min(len(p), 1 + f // args.every)
    return prompt_for(p[:k])
sess = [gen.session(prompt_at(p, 0), seed=1000 + i, **params) for i, (p, s) in enumerate(rows)]
exact, recall = [], []
for f in range(args.frames):
    for (p, _), s in zip(rows, sess, strict=True):
        want = prompt_at(p, f)
        if s.prompt != want:
            s.set_prompt(want)
    fr = np.stack(gen.step(sess))[..., 0]
    pres = predict_digits(fr, clf) > 0.5
    tgt = np.zeros((len(rows), 10), bool)
    for i, (p, _) in enumerate(rows):
        tgt[i, p] = True
    exact.append(float((pres == tgt).all(1).mean()))
    recall.append(float((pres & tgt).sum(1).mean() / args.n))
print(json.dumps({"every": args.every, "n": args.n, "model": args.model,
                  "exact_by_frame": [round(x, 3) for x in exact],
                  "recall_by_frame": [round(x, 3) for x in recall],
                  "exact_last8": round(float(np.mean(exact[-8:])), 3),
                  "recall_last8": round(float(np.mean(recall[-8:])), 3)}))
