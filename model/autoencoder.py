"""Autoencoders between uint8 RGB frames and the tensors the DiT denoises.

The demo model works in pixel space (:class:`PixelAutoencoder`). A latent VAE plugs in
by implementing the same three members and registering itself in ``AUTOENCODERS``; the
model config names it, so the generator and the trainer never branch on it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .config import ModelConfig


class Autoencoder(Protocol):
    def encode(self, frames: np.ndarray | Tensor) -> Tensor:
        """uint8 frames (B, H, W, 3) or (B, H, W) -> (B, C, h, w) float in the model's space."""

    def decode(self, latents: Tensor) -> np.ndarray:
        """(B, C, h, w) -> uint8 RGB frames (B, H, W, 3)."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one frame's latent."""


class PixelAutoencoder:
    """Identity up to scaling: pixels in [0, 255] <-> values in [-1, 1].

    With one channel, frames are grayscale: ``encode`` averages RGB, ``decode`` repeats
    the channel three times.
    """

    def __init__(self, cfg: ModelConfig):
        self.channels, self.size = cfg.channels, cfg.frame_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def encode(self, frames: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(frames).float()
        if x.ndim == 3:  # (B, H, W) grayscale
            x = x[..., None]
        if x.shape[-1] == 3 and self.channels == 1:
            x = x.mean(-1, keepdim=True)
        elif x.shape[-1] == 1 and self.channels == 3:
            x = x.expand(*x.shape[:-1], 3)
        return x.permute(0, 3, 1, 2) / 127.5 - 1.0

    def decode(self, latents: Tensor) -> np.ndarray:
        x = ((latents.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        x = x.permute(0, 2, 3, 1).cpu().numpy()
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return np.ascontiguousarray(x)


AUTOENCODERS = {"pixel": PixelAutoencoder}


def build_autoencoder(cfg: ModelConfig) -> Autoencoder:
    try:
        return AUTOENCODERS[cfg.autoencoder](cfg)
    except KeyError:
        raise ValueError(f"unknown autoencoder {cfg.autoencoder!r}; known: {list(AUTOENCODERS)}"
                         ) from None
