"""Loading and saving models: safetensors weights with their JSON config beside them.

Finding files, reading configs and cards and hashing weights is torch-free
(:mod:`pomstream.model.files`); this module builds and fills the network. The bundled demo
model lives in ``model/weights/``; ``load_model("demo")`` finds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .autoencoder import build_autoencoder
from .config import ModelConfig, get_config
from .dit import VideoDiT
from .files import metadata, read_config, resolve, weights_digest


def save_model(model: VideoDiT, path: str | Path, extra: dict | None = None) -> Path:
    """Write weights (float32) and config; ``extra`` goes into the JSON (a model card)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": model.cfg.to_json(), "format": "pomstream.model.v1"}
    ae_digest = autoencoder_digest(model.cfg)
    if ae_digest:  # a latent model is only valid with the autoencoder it was trained on
        meta["autoencoder_digest"] = ae_digest
        extra = {**(extra or {}), "autoencoder_digest": ae_digest}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash never leaves half a model under the real name
    card = {"config": json.loads(model.cfg.to_json()),
            "prompts": model.cfg.prompt_rules.describe(), **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def autoencoder_digest(cfg: ModelConfig) -> str | None:
    """Hash of the weights of ``cfg``'s autoencoder; None when it has none (pixels)."""
    return getattr(build_autoencoder(cfg), "digest", None)


def load_model(spec: str | Path = "demo", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, seed: int = 0) -> VideoDiT:
    """Load trained weights, or build a registry size with random weights (seeded)."""
    path = resolve(spec)
    if path is None:
        torch.manual_seed(seed)
        model = VideoDiT(get_config(str(spec)))
    else:
        if not path.exists():
            raise FileNotFoundError(f"model weights missing: {path}")
        cfg = read_config(path)
        trained_with = metadata(path).get("autoencoder_digest")
        if trained_with and trained_with != autoencoder_digest(cfg):
            raise ValueError(f"{path} was trained with another {cfg.autoencoder!r} "
                             f"autoencoder (weights {trained_with}) than the one installed")
        model = VideoDiT(cfg)
        model.load_state_dict(load_file(str(path)))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


__all__ = ["save_model", "load_model", "autoencoder_digest", "read_config", "resolve",
           "weights_digest"]
