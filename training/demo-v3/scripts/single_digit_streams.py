"""One-off record (2026-11-30): do single-digit streams keep their digit over 400 frames?

"digit 0".."digit 9" x 3 seeds (seeds 0-29), the card's sampling of 2026-11-30, scored at
frames 0-19 and 380-399; ``streams_held``: streams whose frames 380-399 show exactly their
digit at least half the time. Results: docs/demo-training.md ("demo-v3 from step 18,586").
Run from the repository root:

    .venv/bin/python training/demo-v3/scripts/single_digit_streams.py demo
"""
import json
import sys

import torch

from pomstream.model.checkpoint import load_model
from pomstream.model.evaluate import evaluate_generator
from pomstream.model.streaming import StreamGenerator

torch.set_num_threads(1)
model = sys.argv[1]
prompts = [f"digit {d}" for d in range(10) for _ in range(3)]
out = evaluate_generator(StreamGenerator(load_model(model)), prompts, frames=400,
                         windows=((0, 20), (380, 400)), progress=False, by_digits_report=True,
                         steps=8, first_steps=16, guidance=6.0, first_guidance=4.0,
                         sampler="euler")
out["model"] = model
late = [r["window_380_400"]["prompt_accuracy"] for r in out["per_video"]]
out["streams_held"] = sum(a >= 0.5 for a in late)
print(json.dumps(out))
