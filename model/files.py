"""Model files and the weights folder, without torch.

A model file ``X.safetensors`` keeps its config in the safetensors metadata and, for
people and tools, in ``X.json`` next to it (the model card, with the recommended
``generation`` settings). This module finds model files, reads their config and card and
hashes weights; it imports no torch (a safetensors header is 8 bytes of length and a JSON
object), so the API process can describe the served model without loading it.
Loading and saving the weights themselves is :mod:`pomstream.model.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from .config import REGISTRY, ModelConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_MODEL = WEIGHTS_DIR / "pom-dit-demo.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # what the safetensors format itself allows


def resolve(spec: str | Path) -> Path | None:
    """The model file for ``spec`` ("demo": the bundled one; or a path), or None for a
    registry size, which ``load_model`` builds with random weights."""
    if str(spec) == "demo":
        return DEMO_MODEL
    path = Path(spec)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix == ".safetensors":
        if not path.exists():
            raise FileNotFoundError(f"no model file at {path}")
        return path
    if str(spec) in REGISTRY:
        return None
    raise ValueError(f"{spec!r} is neither a model file, a checkpoint folder nor one of "
                     f"{', '.join(REGISTRY)}")


def metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (read from its header only)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    return dict(header.get("__metadata__") or {})


def read_config(path: str | Path) -> ModelConfig:
    meta = metadata(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no pomstream model config in its metadata")
    return ModelConfig.from_dict(json.loads(meta["config"]))


def generation_defaults(spec: str | Path) -> dict:
    """Sampling settings recommended in a model's card (``generation`` in its JSON)."""
    path = resolve(spec)
    card = path.with_suffix(".json") if path is not None else None
    if card is None or not card.exists():
        return {}
    return dict(json.loads(card.read_text()).get("generation", {}))


# the fields of streaming.GenerationParams (a test keeps the two equal; this module
# cannot import that one: it would bring torch into the API process)
SAMPLING_KEYS = ("steps", "first_steps", "sampler", "guidance", "first_guidance",
                 "context_noise", "layers")


def generation_params(spec: str | Path, overrides) -> dict:
    """The card's sampling settings, each replaced by the attribute of the same name of
    ``overrides`` (command-line arguments, server settings) where that is set."""
    params = generation_defaults(spec)
    for key in SAMPLING_KEYS:
        value = getattr(overrides, key, None)
        if value is not None:
            params[key] = value
    return params


def weights_digest(module) -> str:
    """Hash of a torch module's parameters and buffers: a session snapshot only restores
    into the same weights, a latent model only loads with the autoencoder it was trained
    on."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
