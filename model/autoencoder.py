"""Autoencoders between uint8 RGB frames and the tensors the DiT denoises.

Two are registered in ``AUTOENCODERS`` (the model config names one, so the generator and
the trainer never branch on it; ``ModelConfig.latent_shape`` gives its output shape):

- ``"pixel"`` (:class:`PixelAutoencoder`): pixels scaled to [-1, 1], no weights.
- ``"conv-f4"`` (:class:`ConvAutoencoder`): a small convolutional autoencoder trained
  on Moving-digits frames, 64x64 gray -> 4 x 16 x 16 latents (4x fewer numbers than
  the pixels), each channel normalised to mean 0, variance 1 over the training frames.
  Its weights ship in ``model/weights/autoencoder-conv-f4.safetensors``; ``pomstream
  train-autoencoder`` rebuilds them on a CPU. A latent diffusion model has an
  easier job than a pixel one: a latent is smooth where a digit's 1-pixel strokes are
  not, and the decoder, not the DiT, draws the strokes.

Another latent VAE plugs in by implementing the three members of :class:`Autoencoder`,
taking ``(cfg, device=...)`` in its constructor (``encode`` returns tensors on that
device), and registering itself here (and its shape in ``model.config.LATENTS``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .files import WEIGHTS_DIR, weights_digest


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

    def __init__(self, cfg: ModelConfig, device: str | torch.device = "cpu"):
        self.channels, self.size = cfg.channels, cfg.frame_size
        self.device = torch.device(device)

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
        return (x.permute(0, 3, 1, 2) / 127.5 - 1.0).to(self.device)

    def decode(self, latents: Tensor) -> np.ndarray:
        x = ((latents.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        x = x.permute(0, 2, 3, 1).cpu().numpy()
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return np.ascontiguousarray(x)


def _to_gray_unit(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 (B, H, W) or (B, H, W, 3) -> float (B, 1, H, W) in [0, 1]."""
    x = torch.as_tensor(frames)
    if x.ndim == 4:
        x = x.float().mean(-1)
    return x.float()[:, None] / 255.0


class ConvNet(nn.Module):
    """The networks of :class:`ConvAutoencoder`: 64x64x1 <-> 16x16x4, two stride-2 stages.

    ``shift``/``scale`` (buffers) normalise each latent channel to mean 0, variance 1 over
    training frames, so the DiT's noise (unit Gaussian) matches the latents' scale.
    """

    def __init__(self, width: int = 32, latent: int = 4):
        super().__init__()
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),  # 32x32
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),  # 16x16
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, latent, 3, padding=1))
        self.dec = nn.Sequential(
            nn.Conv2d(latent, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),  # 32x32
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.SiLU(),  # 64x64
            nn.Conv2d(w, 1, 3, padding=1))
        self.register_buffer("shift", torch.zeros(latent, 1, 1))
        self.register_buffer("scale", torch.ones(latent, 1, 1))

    def encode_raw(self, x: Tensor) -> Tensor:
        """(B, 1, 64, 64) in [0, 1] -> unnormalised latents."""
        return self.enc(x * 2 - 1)

    def decode_logits(self, z_raw: Tensor) -> Tensor:
        return self.dec(z_raw)


class ConvAutoencoder:
    """Moving-digits frames <-> normalised (4, 16, 16) latents, see the module docstring."""

    FACTOR, CHANNELS = 4, 4

    def __init__(self, cfg: ModelConfig, path: str | Path | None = None,
                 device: str | torch.device = "cpu"):
        if cfg.channels != 1:
            raise ValueError("the conv-f4 autoencoder encodes grayscale frames (channels=1)")
        if cfg.frame_size % self.FACTOR:
            raise ValueError(f"frame_size must be a multiple of {self.FACTOR}")
        self.size = cfg.frame_size
        path = Path(path) if path else WEIGHTS_DIR / "autoencoder-conv-f4.safetensors"
        self.net = load_conv_autoencoder(path).to(device)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.size // self.FACTOR
        return (self.CHANNELS, side, side)

    @property
    def digest(self) -> str:
        return weights_digest(self.net)

    @torch.no_grad()
    def encode(self, frames: np.ndarray | Tensor) -> Tensor:
        net = self.net
        x = _to_gray_unit(frames).to(net.shift.device)
        return ((net.encode_raw(x) - net.shift) / net.scale).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        net = self.net
        z = latents.detach().to(net.shift.device, torch.float32) * net.scale + net.shift
        x = torch.sigmoid(net.decode_logits(z))  # (B, 1, H, W)
        x = (x * 255.0).round().to(torch.uint8)[:, 0].cpu().numpy()
        return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1))


_LOADED: dict[tuple[str, float], ConvNet] = {}


def load_conv_autoencoder(path: Path) -> ConvNet:
    """The trained networks (cached per file and modification time; a copy per caller)."""
    from safetensors.torch import load_file, safe_open

    if not path.exists():
        raise FileNotFoundError(f"autoencoder weights missing: {path} (pomstream "
                                "train-autoencoder writes them)")
    key = (str(path), path.stat().st_mtime)
    if key not in _LOADED:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        net = ConvNet(**json.loads(meta.get("arch", "{}")))
        net.load_state_dict(load_file(str(path)))
        _LOADED[key] = net.eval().requires_grad_(False)
    return copy.deepcopy(_LOADED[key])


AUTOENCODERS = {"pixel": PixelAutoencoder, "conv-f4": ConvAutoencoder}


def build_autoencoder(cfg: ModelConfig, device: str | torch.device = "cpu") -> Autoencoder:
    try:
        cls = AUTOENCODERS[cfg.autoencoder]
    except KeyError:
        raise ValueError(f"unknown autoencoder {cfg.autoencoder!r}; known: {list(AUTOENCODERS)}"
                         ) from None
    return cls(cfg, device=device)


# -- training the conv autoencoder -----------------------------------------------------------

def _frames(data, rng: np.random.Generator, n: int) -> Tensor:
    """n single frames of random clips (a few empty: the background must decode black)."""
    x = np.zeros((n, data.size, data.size), dtype=np.uint8)
    for i in range(n):
        if rng.random() >= 0.03:
            x[i] = data.sample(rng, frames=1).frames[0]
    return _to_gray_unit(x)


def _print(msg: str) -> None:
    print(msg, flush=True)


def train_conv_autoencoder(out: Path, steps: int = 2000, batch: int = 64, lr: float = 2e-3,
                           noise: float = 0.1, latent_penalty: float = 1e-3, seed: int = 0,
                           width: int = 32, log=None) -> dict:
    """Train on Moving-digits frames (train split), measure on the test split, save.

    Loss: binary cross-entropy of the pixels (in [0, 1]) plus ``latent_penalty`` x the
    mean square of the raw latents (keeps their scale bounded); the decoder sees the
    latents with Gaussian noise of ``noise`` x their standard deviation added, so that a
    diffusion model's small errors in latent space still decode to clean digits.
    """
    from safetensors.torch import save_file

    from .data import MovingDigits

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_data, test_data = MovingDigits("train"), MovingDigits("test")
    net = ConvNet(width=width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:  # warm-up, then cosine to a tenth
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (
                0.1 + 0.45 * (1 + np.cos(np.pi * step / steps)))
        x = _frames(train_data, rng, batch)
        z = net.encode_raw(x)
        z_noisy = z + noise * z.detach().std() * torch.randn_like(z)
        rec = F.binary_cross_entropy_with_logits(net.decode_logits(z_noisy), x)
        loss = rec + latent_penalty * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            (log or _print)(f"step {step + 1}/{steps}: bce {rec.item():.4f} "
                            f"({time.time() - t0:.0f} s)")
    net.eval().requires_grad_(False)
    # normalisation statistics over training frames, then the test error
    z = torch.cat([net.encode_raw(_frames(train_data, rng, 256)) for _ in range(8)])
    net.shift.copy_(z.mean((0, 2, 3))[:, None, None])
    net.scale.copy_(z.std((0, 2, 3))[:, None, None])
    x = _frames(test_data, np.random.default_rng(seed + 1), 512)
    with torch.no_grad():
        z = net.encode_raw(x)
        rec = torch.sigmoid(net.decode_logits(z))
    report = {"steps": steps, "batch": batch, "train_seconds": round(time.time() - t0, 1),
              "test_mae_0_255": round(float((rec - x).abs().mean() * 255), 3),
              "test_mae_ink_0_255": round(float(((rec - x).abs() * (x > 0.25)).sum()
                                                / (x > 0.25).sum() * 255), 3),
              "latent_shape": list(z.shape[1:]), "width": width, "noise": noise,
              "latent_penalty": latent_penalty}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(tmp), metadata={"arch": json.dumps({"width": width}),
                                          "report": json.dumps(report)})
    tmp.replace(out)
    report["digest"] = weights_digest(net)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    """``pomstream train-autoencoder [--steps N] [--out PATH] ...``."""
    import argparse

    tr = argparse.ArgumentParser(prog="pomstream train-autoencoder",
                                 description="train the conv-f4 autoencoder on Moving-digits "
                                             "frames and save its weights")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--batch", type=int, default=64)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--width", type=int, default=32)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=0)
    tr.add_argument("--out", default=str(WEIGHTS_DIR / "autoencoder-conv-f4.safetensors"))
    args = tr.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = train_conv_autoencoder(Path(args.out), steps=args.steps, batch=args.batch,
                                    lr=args.lr, seed=args.seed, width=args.width)
    print(json.dumps(report, indent=2))

