"""PoM's operators as the model calls them: Triton kernels or the reference, one switch.

Every function here takes the same arguments and gives the same numbers (to float
tolerance) on either backend; ``kernels.dispatch.use_triton`` picks. The kernels have
autograd: the forward is fused, the backward of the aggregation is a second fused kernel,
the backward of the selection recomputes the reference (it is element-wise and cheap).

- :func:`feature_sums`: sums of PoM's features over groups of tokens (sequence, frame,
  single token), optionally weighted (padding masks);
- :func:`causal_mean`: token-causal prefix mean;
- :func:`state_update`: streaming, fold a chunk into many carried states (inference);
- :func:`select`: gate x state, the input of the output projection.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from pomstream.kernels.dispatch import use_triton
from pomstream.kernels.pom.aggregate import naive as agg_naive
from pomstream.kernels.pom.select import naive as sel_naive
from pomstream.kernels.pom.state_update import naive as upd_naive

_MAX_BLOCKS = 65535  # grid axes 1 and 2
_MAX_OFFSET = 2**31  # offsets inside one sequence are 32-bit in the kernels


def _fits(t: Tensor) -> bool:
    """Whether the kernels take this (B, N, C) tensor: not empty, offsets inside a sequence
    within 32 bits, token blocks within the grid. Otherwise the reference runs."""
    if t.numel() == 0:
        return False
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:],
                                                                 strict=True))
    return extent < _MAX_OFFSET and t.shape[1] < 16 * _MAX_BLOCKS


def _kernels(name: str):
    import importlib

    return importlib.import_module(f"pomstream.kernels.pom.{name}.kernel")


class _FeatureSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hc, coeff, weights, group):
        out = _kernels("aggregate").feature_sums(hc, coeff, group, weights)
        ctx.save_for_backward(hc, coeff, weights)
        ctx.group = group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        if ctx.needs_input_grad[2]:
            raise NotImplementedError("the kernels give no gradient for the token weights")
        hc, coeff, weights = ctx.saved_tensors
        group = ctx.group or hc.shape[1]  # one row for the whole sequence
        dh, dc = _kernels("aggregate").feature_sums_backward(hc, coeff, grad, group, weights)
        return dh, dc, None, None


class _CausalMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hc, coeff):
        ctx.save_for_backward(hc, coeff)
        return _kernels("aggregate").causal_mean(hc, coeff)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        hc, coeff = ctx.saved_tensors
        n = torch.arange(1, hc.shape[1] + 1, device=hc.device, dtype=grad.dtype)[:, None]
        g = (grad / n).flip(1).cumsum(1).flip(1)  # token n feeds every row t >= n
        dh, dc = _kernels("aggregate").feature_sums_backward(hc, coeff, g, 1)
        return dh, dc


class _Select(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hs, bias, hbar, rows):
        ctx.save_for_backward(hs, bias, hbar)
        ctx.rows = rows
        return _kernels("select").select(hs, bias, hbar, rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        hs, bias, hbar = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need)
                      for t, need in zip((hs, bias, hbar), ctx.needs_input_grad[:3], strict=True)]
            out = sel_naive.select(*leaves, ctx.rows)
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad))
        return (*(next(grads) if t.requires_grad else None for t in leaves), None)


def feature_sums(hc: Tensor, coeff: Tensor, group: int | None = None,
                 weights: Tensor | None = None) -> Tensor:
    """(B, N // group, eD) sums of features (float32, float64 stays); group None: (B, 1, eD)."""
    if use_triton(hc) and _fits(hc):
        return _FeatureSums.apply(hc, coeff, weights, group)
    return agg_naive.feature_sums(hc, coeff, group, weights)


def causal_mean(hc: Tensor, coeff: Tensor) -> Tensor:
    """(B, N, eD): row t is the mean of the features of tokens <= t."""
    if use_triton(hc) and _fits(hc):
        return _CausalMean.apply(hc, coeff)
    return agg_naive.causal_mean(hc, coeff)


def state_update(hc: Tensor, coeff: Tensor, total: Tensor, count: Tensor,
                 gamma: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(hbar, new total, new count); see ``kernels/pom/state_update/naive.py``. The kernel
    has no backward: with gradients required the reference runs."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hc, coeff, total, count, gamma))
    if not grad and use_triton(hc) and _fits(hc) and hc.shape[0] < 2**31:
        return _kernels("state_update").state_update(hc, coeff, total, count, gamma)
    return upd_naive.state_update(hc, coeff, total, count, gamma)


def select(hs: Tensor, bias: Tensor, hbar: Tensor, rows: int) -> Tensor:
    """(B, T, eD) gated state; row t reads ``hbar[:, t // rows]``."""
    if use_triton(hs) and _fits(hs) and _fits(hbar) and hs.shape[1] < 64 * _MAX_BLOCKS:
        return _Select.apply(hs, bias, hbar, rows)
    return sel_naive.select(hs, bias, hbar, rows)
