"""Start a bigger model from a trained one: the new parts begin switched off.

A config that adds branches to the blocks (``prompt_mixer``: a cross-PoM to the prompt's
digit tokens) keeps every tensor of the old model and adds new ones. Its adaLN layers get
rows for the new branch *after* the old ones, and adaLN-zero starts those rows at zero:
with the old tensors copied in, the grown model computes exactly what the old one did
until training opens the new gates. ``pomstream train --init-from`` uses this to continue
a run with a changed architecture instead of training from scratch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def grow_into(model: nn.Module, source: dict[str, Tensor]) -> list[str]:
    """Copy ``source`` (a state dict of the smaller model) into ``model`` in place.

    A tensor of the same shape is copied; one that only grew along dim 0 (adaLN rows)
    fills its first rows and leaves the rest as initialised; tensors ``source`` lacks
    keep their initial values. Returns the names of the tensors that were not fully
    copied (grown or new). Anything else (a tensor of ``source`` the model lacks, or a
    shape that shrank or changed in another dimension) is a ValueError: the models do not
    nest.
    """
    own = model.state_dict()
    unknown = sorted(set(source) - set(own))
    if unknown:
        raise ValueError(f"the source model has tensors this one lacks: {unknown[:5]}")
    partial = []
    with torch.no_grad():
        for name, target in own.items():
            if name not in source:
                partial.append(name)
                continue
            value = source[name].to(target.dtype)
            if value.shape == target.shape:
                target.copy_(value)
            elif (value.ndim == target.ndim and value.shape[1:] == target.shape[1:]
                  and value.shape[0] < target.shape[0]):
                target[: value.shape[0]].copy_(value)
                partial.append(name)
            else:
                raise ValueError(f"{name}: {tuple(value.shape)} does not grow into "
                                 f"{tuple(target.shape)}")
    return partial


def load_source(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(weights, EMA weights) of a run's ``train_state.pt`` or of a model file (whose
    weights are its EMA weights: both the same)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init-from: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
        return weights, weights
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "ema" not in state:
        raise ValueError(f"--init-from: {path} is neither a train_state.pt nor a .safetensors "
                         "model")
    return state["model"], state["ema"]
