"""The PoM video model: layer, video DiT, diffusion, streaming generator, training."""

from .checkpoint import load_model, save_model
from .config import REGISTRY, ModelConfig, get_config
from .dit import VideoDiT
from .pom import PoM, PoMState
from .streaming import GenerationParams, SnapshotError, StreamGenerator, StreamSession

__all__ = ["PoM", "PoMState", "VideoDiT", "ModelConfig", "REGISTRY", "get_config",
           "load_model", "save_model", "StreamGenerator", "StreamSession", "GenerationParams",
           "SnapshotError"]
