"""The README model card's picture: frames 8-11 and 996-999 of four prompts, two seeds
each, with the model's card sampling (rows: prompt x seed; columns: the 8 frames).

    .venv/bin/python docs/demo_frames.py [--model demo] [--threads 2]

Writes docs/images/demo-frames-10-and-1000.png (each 64x64 frame scaled 2x).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pomstream.media.images import encode_png
from pomstream.model import StreamGenerator, load_model
from pomstream.model.files import generation_defaults

PROMPTS = ["digit 3", "digit 7", "digits 3 and 7", "digits 1, 4 and 9"]
SEEDS = [0, 1]
EARLY, LATE = range(8, 12), range(996, 1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "images"
                                        / "demo-frames-10-and-1000.png"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = StreamGenerator(load_model(args.model))
    params = generation_defaults(args.model)
    sessions = [gen.session(prompt, seed, **params) for prompt in PROMPTS for seed in SEEDS]
    rows: list[list[np.ndarray]] = [[] for _ in sessions]
    for index in range(max(LATE) + 1):
        frames = gen.step(sessions)
        if index in EARLY or index in LATE:
            for row, frame in zip(rows, frames, strict=True):
                row.append(frame)
    gap = np.full((64, 8, 3), 255, np.uint8)
    grid = np.concatenate([np.concatenate(r[:4] + [gap] + r[4:], axis=1) for r in rows], axis=0)
    grid = grid.repeat(2, axis=0).repeat(2, axis=1)
    Path(args.out).write_bytes(encode_png(grid))
    print(f"wrote {args.out}: rows {[f'{p} / seed {s}' for p in PROMPTS for s in SEEDS]}")


if __name__ == "__main__":
    main()
