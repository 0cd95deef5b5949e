"""Model configuration and the registry of named sizes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from .prompts import ORDERS, PromptRules


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a video DiT's architecture and its input/output format.

    Two configs with the same :meth:`fingerprint` build interchangeable models, so a
    session snapshot or a checkpoint records it and refuses a model that differs.
    """

    name: str = "pom-dit-tiny"
    # video format
    frame_size: int = 64  # frames are square, frame_size x frame_size pixels
    channels: int = 1  # 1 = grayscale rendered as RGB, 3 = RGB
    fps: int = 8
    autoencoder: str = "pixel"  # see model.autoencoder.AUTOENCODERS
    # transformer
    patch: int = 8
    dim: int = 128
    depth: int = 4
    mlp_ratio: float = 4.0
    # PoM
    degree: int = 2
    expand: int = 2
    n_sel_heads: int = 1  # 1: every state channel gated per token; H > 1: H gates a token
    coeff_init: float = 1e-3  # polynomial coefficients start in +-coeff_init
    spatial_mixer: bool = True  # a within-frame PoM in each block besides the temporal one
    temporal_decay: bool = True  # per-channel decay of the carried state (see model.pom)
    local_mixer: bool = False  # depthwise 3x3 conv over a frame's patch grid inside the MLP
    # temporal PoM: "global" mixes all tokens of frames <= f into one state per layer (eD
    # numbers); "per_position" gives each patch position its own state along time (L x eD),
    # so a token can read what was at its place in earlier frames
    temporal_mixer: str = "global"
    decay_max: float = 0.9
    # prompt encoder: "bytes" (UTF-8 bytes, PoM with a padding mask, pooled into adaLN)
    # or "digits" (the Moving-digits grammar read as a digit set and count; see
    # model.prompts)
    prompt_encoder: str = "bytes"
    prompt_dim: int = 64
    max_prompt_bytes: int = 64
    # conditioning = LN(timestep embedding) + LN(prompt vector): both parts the same size
    # in adaLN's input (without it the timestep embedding grows to ~20x the prompt's)
    cond_norm: bool = False
    # cross-PoM from each frame's tokens to the prompt's digit tokens in every block
    # (query = frame tokens, context = one token per named digit, padding masked), beside
    # the pooled adaLN vector: a token can read one digit of "digits 0 and 5" rather than
    # their sum, which is what two objects need to be two different digits ("digits"
    # encoder only; the branch starts gated off, so a model without it can be grown into
    # one, see model.grow)
    prompt_mixer: bool = False
    # what the pooled adaLN vector of the "digits" encoder holds: "set" (which digits and
    # how many) or "count" (how many only; which digits then reaches the frame through
    # the cross-PoM's digit tokens alone, so it needs prompt_mixer)
    prompt_pooled: str = "set"
    # what the order of a prompt's digits means ("digits" encoder only): "any" (nothing)
    # or "left_to_right" (trained on prompts that name the digits by their places, left
    # first: model.data.MovingDigits; the encoder then reads which digit is named in which
    # place, so two digits of a pair have different places to be drawn at)
    prompt_order: str = "any"
    # diffusion
    timestep_shift: float = 1.0
    train_clip_frames: int = 12

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one frame as the DiT sees it (after the autoencoder)."""
        factor, channels = LATENTS[self.autoencoder]
        side = self.frame_size // factor
        return (channels or self.channels, side, side)

    @property
    def tokens_per_frame(self) -> int:
        side = self.latent_shape[1] // self.patch
        return side * side

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """Hash of the architecture (the name excluded: renaming changes nothing).

        Fields added after a config format was in use are left out while they hold their
        default, so models and snapshots made before they existed keep their fingerprint.
        """
        data = asdict(self)
        data.pop("name")
        for key, default in _ADDED_LATER.items():
            if data.get(key) == default:
                data.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def __post_init__(self):
        if self.autoencoder not in LATENTS:
            raise ValueError(f"unknown autoencoder {self.autoencoder!r}; known: {list(LATENTS)}")
        factor = LATENTS[self.autoencoder][0]
        if self.frame_size % factor or (self.frame_size // factor) % self.patch:
            raise ValueError(f"patch {self.patch} must divide the latent side "
                             f"{self.frame_size} / {factor}")
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        if self.temporal_mixer not in ("global", "per_position"):
            raise ValueError("temporal_mixer must be 'global' or 'per_position'")
        if self.prompt_encoder not in ("bytes", "digits"):
            raise ValueError("prompt_encoder must be 'bytes' or 'digits'")
        if self.prompt_mixer and self.prompt_encoder != "digits":
            raise ValueError("prompt_mixer needs prompt_encoder='digits' (its digit tokens)")
        if self.prompt_pooled not in ("set", "count"):
            raise ValueError("prompt_pooled must be 'set' or 'count'")
        if self.prompt_pooled == "count" and not self.prompt_mixer:
            raise ValueError("prompt_pooled='count' needs prompt_mixer=true: the digit tokens "
                             "are then the only way the digits reach the frame")
        if self.prompt_order not in ORDERS:
            raise ValueError(f"prompt_order must be one of {ORDERS}")
        if self.prompt_order != "any" and self.prompt_encoder != "digits":
            raise ValueError("prompt_order needs prompt_encoder='digits'")

    @property
    def prompt_rules(self) -> PromptRules:
        """What this model's prompt encoder accepts (torch-free, see model.prompts)."""
        return PromptRules(self.prompt_encoder, self.max_prompt_bytes, self.prompt_order)


# fields introduced after models were shipped, with the value that reproduces the old model
_ADDED_LATER = {"prompt_encoder": "bytes", "cond_norm": False, "prompt_mixer": False,
                "prompt_pooled": "set", "prompt_order": "any"}


# autoencoder name -> (downsampling factor, latent channels; None: the frame's channels);
# the networks themselves are in model.autoencoder
LATENTS: dict[str, tuple[int, int | None]] = {"pixel": (1, None), "conv-f4": (4, 4)}

_PAPER = dict(frame_size=64, channels=3, patch=2, degree=2, expand=2, n_sel_heads=16)

REGISTRY: dict[str, ModelConfig] = {
    # tiny: unit tests (16 tokens a frame, runs in milliseconds on a CPU)
    "pom-dit-tiny": ModelConfig(name="pom-dit-tiny", frame_size=16, patch=4, dim=32, depth=2,
                                n_sel_heads=4, prompt_dim=16, max_prompt_bytes=32,
                                train_clip_frames=4),
    # demo: the bundled Moving-digits model, trained on a CPU (why each choice differs
    # from the defaults, with its measurement: the README's model card)
    "pom-dit-demo": ModelConfig(name="pom-dit-demo", autoencoder="conv-f4", patch=2,
                                coeff_init=0.1, train_clip_frames=8, local_mixer=True,
                                temporal_mixer="per_position", prompt_encoder="digits",
                                cond_norm=True),
    # the paper's sizes (width / depth), on 64x64 inputs with patch 2 = 1,024 tokens a frame
    "pom-dit-s": ModelConfig(name="pom-dit-s", dim=384, depth=12, **_PAPER),
    "pom-dit-b": ModelConfig(name="pom-dit-b", dim=768, depth=12, **_PAPER),
    "pom-dit-l": ModelConfig(name="pom-dit-l", dim=1024, depth=24, **_PAPER),
    "pom-dit-xl": ModelConfig(name="pom-dit-xl", dim=1152, depth=28, **_PAPER),
}


def get_config(name: str, **overrides) -> ModelConfig:
    try:
        cfg = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown model config fields: {sorted(unknown)}")
    return replace(cfg, **overrides) if overrides else cfg
