"""Loading and saving models: safetensors weights with their JSON config beside them.

A model file ``X.safetensors`` keeps its config in the safetensors metadata and, for
people and tools, in ``X.json`` next to it. The bundled demo model lives in
``model/weights/``; ``load_model("demo")`` finds it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from .config import REGISTRY, ModelConfig, get_config
from .dit import VideoDiT

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_MODEL = WEIGHTS_DIR / "pom-dit-demo.safetensors"


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
    card = {"config": json.loads(model.cfg.to_json()), **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def autoencoder_digest(cfg: ModelConfig) -> str | None:
    """Hash of the weights of ``cfg``'s autoencoder; None when it has none (pixels)."""
    from .autoencoder import build_autoencoder

    return getattr(build_autoencoder(cfg), "digest", None)


def _metadata(path: str | Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def read_config(path: str | Path) -> ModelConfig:
    meta = _metadata(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no pomstream model config in its metadata")
    return ModelConfig.from_dict(json.loads(meta["config"]))


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
        trained_with = _metadata(path).get("autoencoder_digest")
        if trained_with and trained_with != autoencoder_digest(cfg):
            raise ValueError(f"{path} was trained with another {cfg.autoencoder!r} "
                             f"autoencoder (weights {trained_with}) than the one installed")
        model = VideoDiT(cfg)
        model.load_state_dict(load_file(str(path)))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def weights_digest(model: torch.nn.Module) -> str:
    """Hash of the parameters and buffers: a session snapshot only restores into the same
    weights, a latent model only loads with the autoencoder it was trained on."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def generation_defaults(spec: str | Path) -> dict:
    """Sampling settings recommended in a model's card (``generation`` in its JSON)."""
    path = resolve(spec)
    card = path.with_suffix(".json") if path is not None else None
    if card is None or not card.exists():
        return {}
    return dict(json.loads(card.read_text()).get("generation", {}))
