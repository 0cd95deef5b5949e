"""Pieces shared by the PoM Triton kernels: the feature polynomial and launch sizes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pomstream.kernels.pom.precision import acc_dtype

_TL = {torch.float32: tl.float32, torch.float64: tl.float64}


def tl_acc(dtype: torch.dtype):
    """The Triton dtype sums over ``dtype`` inputs accumulate in (float64 stays, else
    float32): the kernels' ``ACC`` argument."""
    return _TL[acc_dtype(dtype)]


@triton.jit
def activation(h):
    """a = clamp(leaky_relu(h, 0.01), -0.1, 6) and da/dh (torch's conventions: slope 0.01
    at h <= 0, gradient kept on the clamp bounds)."""
    # constants in h's dtype: a float literal is float32, which would round 0.01 and 0.1
    # differently from torch in float64; h * 0.01 is what torch computes
    neg = tl.full((1,), 0.01, h.dtype)
    lo = tl.full((1,), -0.1, h.dtype)
    lr = tl.where(h > 0, h, h * neg)
    a = tl.minimum(tl.maximum(lr, lo), 6.0)
    da = tl.where((lr >= lo) & (lr <= 6.0), tl.where(h > 0, 1.0, neg), 0.0)
    return a, da


@triton.jit
def load_coeff(coeff_ptr, offs_e, mask_e, stride_ce, j, ACC: tl.constexpr):
    """Coefficient column j as a (1, BLOCK_E) row in the accumulation dtype."""
    return tl.load(coeff_ptr + offs_e * stride_ce + j, mask=mask_e, other=0.0).to(ACC)[None, :]


@triton.jit
def poly(a, coeff_ptr, offs_e, mask_e, stride_ce, DEGREE: tl.constexpr, ACC: tl.constexpr):
    """P = sum_j C[:, j] a**(j+1), Horner form."""
    p = load_coeff(coeff_ptr, offs_e, mask_e, stride_ce, DEGREE - 1, ACC)
    for i in tl.static_range(DEGREE - 1):
        p = load_coeff(coeff_ptr, offs_e, mask_e, stride_ce, DEGREE - 2 - i, ACC) + a * p
    return a * p


@triton.jit
def poly_grad(a, coeff_ptr, offs_e, mask_e, stride_ce, DEGREE: tl.constexpr, ACC: tl.constexpr):
    """dP/da = sum_j (j+1) C[:, j] a**j, Horner form."""
    d = DEGREE * load_coeff(coeff_ptr, offs_e, mask_e, stride_ce, DEGREE - 1, ACC)
    for i in tl.static_range(DEGREE - 1):
        j = DEGREE - 2 - i
        d = (j + 1) * load_coeff(coeff_ptr, offs_e, mask_e, stride_ce, j, ACC) + a * d
    return d


def block_e(width: int) -> int:
    """Channel tile: 128 channels (fewer for narrow layers)."""
    return min(128, triton.next_power_of_2(width))


def block_n(tokens: int) -> int:
    """Token tile for a group of ``tokens`` tokens: 64 rows (fewer for short groups)."""
    return min(64, triton.next_power_of_2(max(tokens, 1)))


@triton.jit
def tile_features(hc_ptr, base, offs_n, offs_e, mask_n, mask_e, s_hn, s_he, coeff_ptr, s_ce,
                  DEGREE: tl.constexpr, ACC: tl.constexpr):
    """(P, mask) of one tile: the features of rows ``offs_n`` and channels ``offs_e`` of hc
    (``base`` = the sequence's offset), in the accumulation dtype, zero outside the mask."""
    m2 = mask_n[:, None] & mask_e[None, :]
    h = tl.load(hc_ptr + base + offs_n[:, None] * s_hn + offs_e[None, :] * s_he,
                mask=m2, other=0.0).to(ACC)
    a, _ = activation(h)
    return tl.where(m2, poly(a, coeff_ptr, offs_e, mask_e, s_ce, DEGREE, ACC), 0.0), m2
