"""The training options stored in a run's train_state.pt, as `pomstream train` flags.

    python3 bench/recipe_args.py training/demo-v3/train_state.pt
    -> --batch 16 --lr 0.001 ... --no-context-loss

Only the options that change what is trained (the GPU scripts add their own run options:
--out, --device, checkpoints, time limit), and `--set key=value` for each field of the
stored model config that differs from its registry entry (a run trained with
`--set prompt_mixer=true` resumes only with it).
"""

import json
import sys

import torch

FLAGS = {"batch": "--batch", "lr": "--lr", "warmup": "--warmup", "image_steps": "--image-steps",
         "image_batch": "--image-batch", "image_every": "--image-every", "restore": "--restore",
         "t_mean": "--t-mean", "t_uniform": "--t-uniform", "steps": "--steps"}


def recipe_flags(args: dict) -> list[str]:
    out = [f"{flag} {args[k]}" for k, flag in FLAGS.items() if args.get(k) is not None]
    if args.get("context_loss") is False:
        out.append("--no-context-loss")
    return out


def config_flags(config_json: str) -> list[str]:
    from pomstream.model.config import get_config

    stored = json.loads(config_json)
    base = json.loads(get_config(stored["name"]).to_json())
    return [f"--set {k}={json.dumps(v, separators=(',', ':'))}"
            for k, v in sorted(stored.items()) if base.get(k) != v]


if __name__ == "__main__":
    state = torch.load(sys.argv[1], weights_only=False, map_location="cpu")
    if len(sys.argv) > 2 and sys.argv[2] == "--json":
        print(json.dumps(state["args"]))
    else:
        print(" ".join(recipe_flags(state["args"]) + config_flags(state["config"])))
