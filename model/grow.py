"""Start a bigger model from a trained one: the new parts begin switched off.

A config that adds branches to the blocks (``prompt_mixer``: a cross-PoM to the prompt's
digit tokens, with its own adaLN layer) keeps every tensor of the old model and adds new
ones, and adaLN-zero starts the new branch's gate at zero: with the old tensors copied in,
the grown model computes exactly what the old one did until training opens the new gate.
``pomstream train --init-from`` uses this to continue a run with a changed architecture
instead of training from scratch (``--new-lr-mult`` trains the new tensors faster).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def grow_into(model: nn.Module, source: dict[str, Tensor]) -> list[str]:
    """Copy ``source`` (a state dict of the smaller model) into ``model`` in place.

    Every tensor of ``source`` must exist in ``model`` with the same shape; the tensors
    ``source`` lacks keep their initial values, and their names are returned. Anything
    else is a ValueError: the models do not nest.
    """
    own = model.state_dict()
    unknown = sorted(set(source) - set(own))
    if unknown:
        raise ValueError(f"the source model has tensors this one lacks: {unknown[:5]}")
    for name, value in source.items():
        if value.shape != own[name].shape:
            raise ValueError(f"{name}: {tuple(value.shape)} in the source, "
                             f"{tuple(own[name].shape)} here")
    with torch.no_grad():
        for name, value in source.items():
            own[name].copy_(value.to(own[name].dtype))
    return [name for name in own if name not in source]


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
