"""The PoM video model: layer, video DiT, diffusion, streaming generator, training.

The names below load on first use, so that importing a torch-free part of this package
(``pomstream.model.config``, ``pomstream.model.prompts``, ``pomstream.model.files``) does
not import torch: the API process reads model configs and prompt rules without it.
"""

from importlib import import_module

_LAZY = {
    "PoM": "pom", "PoMState": "pom", "VideoDiT": "dit",
    "ModelConfig": "config", "REGISTRY": "config", "get_config": "config",
    "load_model": "checkpoint", "save_model": "checkpoint",
    "StreamGenerator": "streaming", "StreamSession": "streaming",
    "GenerationParams": "streaming", "SnapshotError": "snapshots",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_LAZY[name]}", __name__), name)
