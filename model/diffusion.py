"""Rectified flow: noising, the training loss with per-frame noise levels, samplers.

Convention: ``x_t = (1 - t) * x0 + t * eps`` with t in [0, 1] (t = 1 is pure noise) and
the network predicts the velocity ``v = eps - x0``; sampling integrates dx/dt = v from
t = 1 down to t = 0.

Training uses *diffusion forcing*: every frame of a clip gets its own noise level, and
the frame-causal network denoises them all at once. Half of the clips instead keep a
random prefix almost clean, which is exactly the situation of streaming generation
(clean past, noisy present).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def add_noise(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x0, eps (B, F, C, H, W); t (B, F)."""
    t = t[..., None, None, None]
    return (1 - t) * x0 + t * eps


@dataclass(frozen=True)
class NoiseLevels:
    """How training draws each frame's noise level (diffusion forcing).

    A level is logit-normal (location ``mean``, scale ``std``: dense where denoising is
    learnt) or, with probability ``uniform``, uniform on [0, 1] (a logit-normal alone
    almost never draws t near 1, where every sampler starts). With probability
    ``clean_prefix_prob`` a clip keeps a random prefix of frames nearly clean (t below
    ``clean_level``): the situation of streaming, clean past and noisy present. Those
    prefix frames are context: with ``context_loss`` False they are inputs only and carry
    no loss (the sampler never asks the model to denoise at t < ``clean_level``).
    """

    mean: float = 0.0
    std: float = 1.0
    uniform: float = 0.5
    clean_prefix_prob: float = 0.5
    clean_level: float = 0.05
    context_loss: bool = True

    def sample(self, batch: int, frames: int, generator: torch.Generator | None = None,
               prefix: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(levels (B, F), context (B, F) bool: the frames of a clean prefix).

        ``prefix`` (B,) forces each clip's clean-prefix length (0: none; -1: drawn as
        usual), for clips whose first frames are context by construction.
        """
        logit_normal = torch.sigmoid(self.mean + self.std * torch.randn(batch, frames,
                                                                        generator=generator))
        uniform = torch.rand(batch, frames, generator=generator)
        pick = torch.rand(batch, frames, generator=generator) < self.uniform
        t = torch.where(pick, uniform, logit_normal)
        drawn = torch.randint(0, frames, (batch,), generator=generator)
        use = torch.rand(batch, generator=generator) < self.clean_prefix_prob
        length = torch.where(use, drawn, torch.zeros_like(drawn))
        if prefix is not None:
            length = torch.where(prefix >= 0, prefix.to(length), length)
        context = torch.arange(frames)[None] < length[:, None]  # (B, F)
        low = torch.rand(batch, frames, generator=generator) * self.clean_level
        return torch.where(context, low, t), context


def sample_levels(batch: int, frames: int, generator: torch.Generator | None = None,
                  clean_prefix_prob: float = 0.5, clean_level: float = 0.05) -> Tensor:
    """Per-frame noise levels (B, F) as :class:`NoiseLevels` draws them by default."""
    levels = NoiseLevels(clean_prefix_prob=clean_prefix_prob, clean_level=clean_level)
    return levels.sample(batch, frames, generator)[0]


def flow_loss(model, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None,
              levels: NoiseLevels | None = None, prefix: Tensor | None = None) -> Tensor:
    """Mean squared error of the predicted velocity; x0 (B, F, C, H, W), cond (B, D).

    The mean is over the frames that carry loss (all of them, or without context frames
    when ``levels.context_loss`` is False); ``prefix`` as in :meth:`NoiseLevels.sample`.
    """
    levels = levels or NoiseLevels()
    B, n_frames = x0.shape[:2]
    t, context = levels.sample(B, n_frames, generator, prefix)
    t, context = t.to(x0.device), context.to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    v = model(add_noise(x0, eps, t), t, cond)
    err = ((v.float() - (eps - x0).float()) ** 2).flatten(2).mean(2)  # (B, F)
    if levels.context_loss:
        return err.mean()
    weight = (~context).float()
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def shifted(t: Tensor, shift: float) -> Tensor:
    """Timestep shift (SD3): spends more steps at high noise when shift > 1."""
    return shift * t / (1 + (shift - 1) * t)


Velocity = Callable[[Tensor, Tensor], Tensor]  # (x, t as (B,)) -> v


class FlowSampler:
    """Integrates the flow from t = 1 to 0; ``set_timesteps`` then ``step`` per interval."""

    evals_per_step = 1

    def __init__(self, shift: float = 1.0):
        self.shift = shift
        self.timesteps = torch.tensor([1.0, 0.0])

    def set_timesteps(self, n: int) -> None:
        if n < 1:
            raise ValueError("need at least one sampling step")
        self.timesteps = shifted(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), self.shift)

    def step(self, velocity: Velocity, x: Tensor, i: int) -> Tensor:
        raise NotImplementedError

    def sample(self, velocity: Velocity, x: Tensor) -> Tensor:
        for i in range(len(self.timesteps) - 1):
            x = self.step(velocity, x, i)
        return x

    def _t(self, i: int, x: Tensor) -> tuple[Tensor, float]:
        t, tn = float(self.timesteps[i]), float(self.timesteps[i + 1])
        return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device), tn - t


class EulerSampler(FlowSampler):
    def step(self, velocity: Velocity, x: Tensor, i: int) -> Tensor:
        t, dt = self._t(i, x)
        return x + dt * velocity(x, t)


class HeunSampler(FlowSampler):
    """Second order (Heun); the last interval, ending at t = 0, is an Euler step."""

    evals_per_step = 2

    def step(self, velocity: Velocity, x: Tensor, i: int) -> Tensor:
        t, dt = self._t(i, x)
        v1 = velocity(x, t)
        x_euler = x + dt * v1
        if float(self.timesteps[i + 1]) == 0.0:
            return x_euler
        v2 = velocity(x_euler, t + dt)
        return x + dt * 0.5 * (v1 + v2)


SAMPLERS = {"euler": EulerSampler, "heun": HeunSampler}


def make_sampler(name: str, steps: int, shift: float = 1.0) -> FlowSampler:
    try:
        sampler = SAMPLERS[name](shift)
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known: {list(SAMPLERS)}") from None
    sampler.set_timesteps(steps)
    return sampler


def guided(v_cond: Tensor, v_uncond: Tensor, scale: Tensor | float) -> Tensor:
    """Classifier-free guidance; ``scale`` is a float or (B,) per sample."""
    if isinstance(scale, Tensor):
        scale = scale.to(v_cond.dtype).view(-1, *([1] * (v_cond.ndim - 1)))
    return v_uncond + scale * (v_cond - v_uncond)
