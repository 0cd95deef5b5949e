"""Does a model use its past, and its prompt? Denoising losses of held-out frames.

For held-out Moving-digits clips, frame f is noised to level t and the model predicts its
velocity from the parallel frame-causal forward with frames < f clean. If the temporal
state carries the past, the loss falls for f > 0 (the previous frames show almost the same
digits) and rises again when the past comes from another clip ("shuffled"). A model whose
loss is the same for every f ignores its past: its frames cannot be consistent in time.

The same loss of frame 0 (no past) with the clip's own prompt, another clip's prompt
and the empty prompt says whether the prompt reaches the frame: a model that draws the
asked digits must do measurably better with its own prompt.

    python -m pomstream.bench.context_use --model demo --json bench/results/context-use-demo.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pomstream.bench.machine import write_json
from pomstream.model.autoencoder import build_autoencoder
from pomstream.model.checkpoint import load_model
from pomstream.model.data import MovingDigits
from pomstream.model.train import make_batch


@torch.no_grad()
def context_losses(model, clips: int = 16, frames: int = 8, levels=(0.5, 0.9),
                   seed: int = 0) -> dict:
    cfg = model.cfg
    data = MovingDigits("test", size=cfg.frame_size)
    x0, prompts, _ = make_batch(data, build_autoencoder(cfg), np.random.default_rng(seed),
                                clips, frames, 0.0)
    cond = model.encode_prompts(prompts)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))

    def loss(f: int, level: float, past: torch.Tensor, c: torch.Tensor = cond) -> float:
        t = torch.zeros(clips, f + 1)
        t[:, f] = level
        noisy = (1 - level) * x0[:, f] + level * eps[:, f]
        v = model(torch.cat([past[:, :f], noisy[:, None]], 1), t, c)[:, f]
        return round(((v - (eps[:, f] - x0[:, f])) ** 2).mean().item(), 4)

    other = torch.roll(torch.arange(clips), 1)  # each clip gets another clip's past / prompt
    other_prompt = [prompts[i] for i in other.tolist()]
    cond_other = model.encode_prompts(other_prompt)
    cond_empty = model.encode_prompts([""] * clips)
    out = {}
    for level in levels:
        row = {f"frame_{f}": loss(f, level, x0) for f in sorted({0, 1, frames // 2, frames - 1})}
        row[f"frame_{frames - 1}_shuffled_past"] = loss(frames - 1, level, x0[other])
        row["frame_0_other_prompt"] = loss(0, level, x0, cond_other)
        row["frame_0_empty_prompt"] = loss(0, level, x0, cond_empty)
        out[f"t={level}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pomstream.bench.context_use", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="'demo', a .safetensors file or a run")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    result = {"benchmark": "context_use", "model": args.model,
              "temporal_mixer": model.cfg.temporal_mixer, "clips": args.clips,
              "losses": context_losses(model, args.clips)}
    for level, row in result["losses"].items():
        print(level, "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
