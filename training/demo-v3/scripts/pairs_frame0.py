"""One-off record (2026-11-30): frame 0 of 45 digit pairs x 4 seeds, failures by kind.

The card's frame-0 sampling (Euler 16, guidance 4) with one thing changed: --shift,
--guidance, --sampler, or negative prompts ("digits a and a", "digits b and b") with
--neg LAM: mode add, v + LAM (v_cond - v_neg); mode mix, the negatives (weight LAM) mixed
into the unconditional branch. With no option it gives what the streaming generator gives.
Results: docs/demo-training.md, "Two-digit frame 0". Run from the repository root:

    .venv/bin/python training/demo-v3/scripts/pairs_frame0.py --model demo --neg 2
"""

import argparse
import collections
import json

import numpy as np
import torch

from pomstream.model.checkpoint import load_model
from pomstream.model.classifier import load_classifier, predict_digits
from pomstream.model.data import prompt_for
from pomstream.model.diffusion import make_sampler
from pomstream.model.streaming import StreamGenerator


def kind(got: set, want: set) -> str:
    if got == want:
        return "exact"
    if not got:
        return "none"
    if got < want:
        return "one_of_two"
    if want < got:
        return "extra"
    return "one_right_one_wrong" if got & want else "all_wrong"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--shift", type=float, default=None, help="default: the model's")
    ap.add_argument("--neg", type=float, default=0.0)
    ap.add_argument("--neg-mode", choices=["add", "mix"], default="add")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = StreamGenerator(load_model(args.model))
    model = gen.model
    rng = np.random.default_rng(0)
    pairs = [sorted(int(d) for d in rng.choice(10, 2, replace=False)) for _ in range(45)]
    rows = [(p, s) for p in pairs for s in range(4)]

    def enc(prompts: list[str]) -> torch.Tensor:
        return torch.cat([gen.encode_prompt(p) for p in prompts])

    cond = enc([prompt_for(p) for p, _ in rows])
    uncond = enc([""] * len(rows))
    neg_a = enc([prompt_for([p[0], p[0]]) for p, _ in rows])
    neg_b = enc([prompt_for([p[1], p[1]]) for p, _ in rows])
    shape = gen.autoencoder.latent_shape
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s))
                     for _, s in rows])
    n, g, lam = len(rows), args.guidance, args.neg

    @torch.no_grad()
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v, _ = model.step(torch.cat([x] * 4), torch.cat([t] * 4),
                          torch.cat([cond, uncond, neg_a, neg_b]), model.empty_states(4 * n))
        vc, vu, va, vb = v.chunk(4)
        vn = 0.5 * (va + vb)
        if args.neg_mode == "add":
            return vu + g * (vc - vu) + lam * (vc - vn)
        base = (1 - lam) * vu + lam * vn
        return base + g * (vc - base)

    shift = args.shift if args.shift is not None else gen.cfg.timestep_shift
    x0 = make_sampler(args.sampler, args.steps, shift).sample(velocity, x)
    frames = gen.autoencoder.decode(x0)[..., 0]
    present = predict_digits(frames, load_classifier()) > 0.5
    kinds = collections.Counter(kind(set(np.flatnonzero(present[i]).tolist()), set(p))
                                for i, (p, _) in enumerate(rows))
    print(json.dumps({**vars(args), **{k: round(v / n, 3) for k, v in kinds.most_common()},
                      "ink_px": float((frames > 64).sum((-2, -1)).mean())}))


if __name__ == "__main__":
    main()
