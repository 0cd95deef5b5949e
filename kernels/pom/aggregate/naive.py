"""Reference (pure PyTorch) for PoM's features and their aggregation.

The maths of ``model/pom.py`` section by section::

    a = clamp(leaky_relu(hc, 0.01), -0.1, 6)
    P = sum_j C[:, j] * a**(j+1)            # Horner form, no constant term

``feature_sums`` sums P over groups of consecutive tokens (whole sequences, frames, or
single tokens), optionally weighted per token (a padding mask); ``causal_mean`` is the
token-causal prefix mean. Sums are taken in float32 (float64 stays float64), whatever
the dtype of ``hc``; the Triton kernels in ``kernel.py`` do the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pomstream.kernels.pom.precision import acc_dtype


def features(hc: Tensor, coeff: Tensor) -> Tensor:
    """P (..., eD) of the context projection ``hc`` (..., eD); coeff (eD, degree)."""
    a = F.leaky_relu(hc, 0.01).clamp(-0.1, 6.0)
    c = coeff.to(a.dtype)
    p = c[:, -1]
    for j in range(c.shape[1] - 2, -1, -1):
        p = c[:, j] + a * p
    return a * p


def feature_sums(hc: Tensor, coeff: Tensor, chunk: int | None = None,
                 weights: Tensor | None = None) -> Tensor:
    """Sums of P over groups of ``chunk`` consecutive tokens: (B, N // chunk, eD).

    hc (B, N, eD); ``chunk`` None sums each whole sequence, (B, 1, eD); ``weights``
    (B, N) multiplies each token's features (a padding mask as 0/1).
    """
    B, N, E = hc.shape
    p = features(hc.to(acc_dtype(hc.dtype)), coeff)
    if weights is not None:
        p = p * weights.to(p.dtype)[..., None]
    if chunk is None:
        return p.sum(1, keepdim=True)
    if chunk < 1 or N % chunk:
        raise ValueError(f"chunk={chunk} must divide the {N} tokens")
    return p.unflatten(1, (N // chunk, chunk)).sum(2)


def causal_mean(hc: Tensor, coeff: Tensor) -> Tensor:
    """Token-causal mean: row t is the mean of P over tokens <= t; (B, N, eD), float32+."""
    p = features(hc.to(acc_dtype(hc.dtype)), coeff)
    n = torch.arange(1, hc.shape[1] + 1, device=hc.device, dtype=p.dtype)[:, None]
    return p.cumsum(1) / n
