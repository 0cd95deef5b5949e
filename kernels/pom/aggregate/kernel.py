"""Triton kernels: PoM's activation, polynomial and aggregation fused in one pass.

The features P never reach memory: each program reads a tile of the context projection
``hc`` (any strides, so the slice of the fused ``qc_proj`` output is read in place),
computes P in registers and reduces it.

- :func:`feature_sums`: sums of P over groups of consecutive tokens (a whole sequence, a
  frame, or single tokens), optionally weighted per token (padding). A whole sequence is
  split over many programs (``split`` tokens each) and the partial sums added after, so
  long sequences use the whole GPU instead of walking N in one program per channel tile.
- :func:`causal_mean`: token-causal prefix mean, chunked: per-chunk sums, a prefix over
  chunks, then a scan inside each chunk.
- :func:`feature_sums_backward`: dL/dhc and dL/dcoeff from the gradient of any such sums,
  given as one gradient row per group of ``group`` tokens.

References: ``naive.py`` beside this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from pomstream.kernels.dispatch import new_output
from pomstream.kernels.pom.common import (
    activation,
    block_e,
    block_n,
    poly_grad,
    tile_features,
    tl_acc,
)
from pomstream.kernels.pom.precision import acc_dtype


@triton.jit
def _sums_fwd(hc_ptr, coeff_ptr, w_ptr, out_ptr, N, E, GROUP,
              s_hb, s_hn, s_he, s_ce, s_wb, s_wn, s_ob, s_og, s_oe,
              HAS_W: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    # 64-bit batch offsets: b * stride passes 2**31 elements at 8 x 128K tokens x 2,304
    b, g, eb = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    start = g * GROUP
    end = tl.minimum(start + GROUP, N)
    acc = tl.zeros((BLOCK_E,), ACC)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        p, _ = tile_features(hc_ptr, b * s_hb, offs_n, offs_e, mask_n, mask_e, s_hn, s_he,
                             coeff_ptr, s_ce, DEGREE, ACC)
        if HAS_W:
            w = tl.load(w_ptr + b * s_wb + offs_n * s_wn, mask=mask_n, other=0.0).to(ACC)
            p = p * w[:, None]
        acc += tl.sum(p, 0)
    tl.store(out_ptr + b * s_ob + g * s_og + offs_e * s_oe, acc, mask=mask_e)


@triton.jit
def _features_fwd(hc_ptr, coeff_ptr, w_ptr, out_ptr, N, E,
                  s_hb, s_hn, s_he, s_ce, s_wb, s_wn, s_ob, s_on, s_oe,
                  HAS_W: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """Groups of one token: P itself (weighted)."""
    # 64-bit batch offsets: b * stride passes 2**31 elements at 8 x 128K tokens x 2,304
    b, nb, eb = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_n, mask_e = offs_n < N, offs_e < E
    p, m2 = tile_features(hc_ptr, b * s_hb, offs_n, offs_e, mask_n, mask_e, s_hn, s_he,
                          coeff_ptr, s_ce, DEGREE, ACC)
    if HAS_W:
        p = p * tl.load(w_ptr + b * s_wb + offs_n * s_wn, mask=mask_n, other=0.0).to(ACC)[:, None]
    tl.store(out_ptr + b * s_ob + offs_n[:, None] * s_on + offs_e[None, :] * s_oe, p, mask=m2)


@triton.jit
def _causal_fwd(hc_ptr, coeff_ptr, prefix_ptr, out_ptr, N, E,
                s_hb, s_hn, s_he, s_ce, s_pb, s_pc, s_pe, s_ob, s_on, s_oe,
                DEGREE: tl.constexpr, ACC: tl.constexpr,
                CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    """Row t = (sum of P over earlier chunks + scan inside this chunk) / (t + 1)."""
    # 64-bit batch offsets: b * stride passes 2**31 elements at 8 x 128K tokens x 2,304
    b, c, eb = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    offs_n = c * CHUNK + tl.arange(0, CHUNK)
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_n, mask_e = offs_n < N, offs_e < E
    p, m2 = tile_features(hc_ptr, b * s_hb, offs_n, offs_e, mask_n, mask_e, s_hn, s_he,
                          coeff_ptr, s_ce, DEGREE, ACC)
    before = tl.load(prefix_ptr + b * s_pb + c * s_pc + offs_e * s_pe, mask=mask_e, other=0.0)
    run = tl.cumsum(p, 0) + before.to(ACC)[None, :]
    out = run / (offs_n + 1).to(ACC)[:, None]
    tl.store(out_ptr + b * s_ob + offs_n[:, None] * s_on + offs_e[None, :] * s_oe, out, mask=m2)


@triton.jit
def _sums_bwd(hc_ptr, coeff_ptr, w_ptr, g_ptr, dh_ptr, dc_ptr, N, E, GROUP, TILE,
              s_hb, s_hn, s_he, s_ce, s_wb, s_wn, s_gb, s_gg, s_ge, s_db, s_dn, s_de,
              s_cb, s_ct, s_ce2, s_cj,
              HAS_W: tl.constexpr, DEGREE: tl.constexpr, DEGREE_P2: tl.constexpr,
              ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """dhc = G[n // GROUP] * w_n * dP/dhc; partial dcoeff of this tile of TILE tokens."""
    # 64-bit batch offsets: b * stride passes 2**31 elements at 8 x 128K tokens x 2,304
    b, t, eb = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    cols = tl.arange(0, DEGREE_P2)
    dcoeff = tl.zeros((BLOCK_E, DEGREE_P2), ACC)
    start = t * TILE
    end = tl.minimum(start + TILE, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        m2 = mask_n[:, None] & mask_e[None, :]
        h = tl.load(hc_ptr + b * s_hb + offs_n[:, None] * s_hn + offs_e[None, :] * s_he,
                    mask=m2, other=0.0).to(ACC)
        grow = offs_n // GROUP
        g = tl.load(g_ptr + b * s_gb + grow[:, None] * s_gg + offs_e[None, :] * s_ge,
                    mask=m2, other=0.0).to(ACC)
        if HAS_W:
            w = tl.load(w_ptr + b * s_wb + offs_n * s_wn, mask=mask_n, other=0.0).to(ACC)
            g = g * w[:, None]
        g = tl.where(m2, g, 0.0)
        a, da = activation(h)
        dp = poly_grad(a, coeff_ptr, offs_e, mask_e, s_ce, DEGREE, ACC)
        tl.store(dh_ptr + b * s_db + offs_n[:, None] * s_dn + offs_e[None, :] * s_de,
                 (g * dp * da).to(dh_ptr.dtype.element_ty), mask=m2)
        apow = a
        for j in tl.static_range(DEGREE):
            contrib = tl.sum(g * apow, 0)  # (BLOCK_E,)
            dcoeff += tl.where(cols[None, :] == j, contrib[:, None], 0.0)
            apow = apow * a
    tl.store(dc_ptr + b * s_cb + t * s_ct + offs_e[:, None] * s_ce2 + cols[None, :] * s_cj,
             dcoeff, mask=mask_e[:, None] & (cols[None, :] < DEGREE))


# -- launchers -------------------------------------------------------------------------------

def _check(hc: Tensor, coeff: Tensor, weights: Tensor | None) -> None:
    if hc.dim() != 3 or coeff.dim() != 2 or coeff.shape[0] != hc.shape[2]:
        raise ValueError(f"hc (B, N, eD) and coeff (eD, k) expected, got {tuple(hc.shape)} "
                         f"and {tuple(coeff.shape)}")
    if weights is not None and weights.shape != hc.shape[:2]:
        raise ValueError(f"weights must be (B, N) = {tuple(hc.shape[:2])}")


def _weights(weights: Tensor | None, acc: torch.dtype, hc: Tensor) -> tuple[Tensor, tuple]:
    """Per-token weights in the accumulation dtype and their strides (an empty tensor and
    zero strides without weights: the kernels then skip them, HAS_W=False)."""
    if weights is None:
        return hc.new_empty(0), (0, 0)
    w = weights.to(acc)
    return w, (w.stride(0), w.stride(1))


def default_split(batch: int, tokens: int, width: int) -> int:
    """Tokens per program when one sum covers a whole sequence: enough programs to fill a
    GPU (about 1,024 with the channel tiles) but at least 256 tokens each."""
    tiles = batch * triton.cdiv(width, block_e(width))
    want = max(1, 1024 // max(tiles, 1))
    return max(256, triton.cdiv(tokens, want))


def group_sums(hc: Tensor, coeff: Tensor, weights: Tensor | None, size: int) -> Tensor:
    """(B, cdiv(N, size), eD): sums of (weighted) P over consecutive runs of ``size`` tokens
    (the last run may be shorter), or P itself when ``size`` is 1."""
    B, N, E = hc.shape
    acc = acc_dtype(hc.dtype)
    coeff = coeff.to(acc).contiguous()
    w, ws = _weights(weights, acc, hc)
    be = block_e(E)
    common = dict(HAS_W=weights is not None, DEGREE=coeff.shape[1], ACC=tl_acc(acc), BLOCK_E=be)
    if size == 1:
        out = new_output((B, N, E), acc, hc.device)
        bn = block_n(N)
        _features_fwd[(B, triton.cdiv(N, bn), triton.cdiv(E, be))](
            hc, coeff, w, out, N, E, *hc.stride(), coeff.stride(0), *ws, *out.stride(),
            BLOCK_N=bn, **common)
        return out
    n_groups = triton.cdiv(N, size)
    out = new_output((B, n_groups, E), acc, hc.device)
    _sums_fwd[(B, n_groups, triton.cdiv(E, be))](
        hc, coeff, w, out, N, E, size, *hc.stride(), coeff.stride(0), *ws, *out.stride(),
        BLOCK_N=block_n(size), **common)
    return out


def feature_sums(hc: Tensor, coeff: Tensor, group: int | None = None,
                 weights: Tensor | None = None, split: int | None = None) -> Tensor:
    """Sums of P over groups of ``group`` tokens, (B, N // group, eD); ``group`` None: one
    sum per sequence (B, 1, eD), computed as partial sums of ``split`` tokens then added."""
    _check(hc, coeff, weights)
    B, N, E = hc.shape
    if group is None:
        return group_sums(hc, coeff, weights, split or default_split(B, N, E)).sum(1, keepdim=True)
    if group < 1 or N % group:
        raise ValueError(f"group={group} must divide the {N} tokens")
    return group_sums(hc, coeff, weights, group)


def feature_sums_backward(hc: Tensor, coeff: Tensor, grad: Tensor, group: int,
                          weights: Tensor | None = None, tile: int = 256
                          ) -> tuple[Tensor, Tensor]:
    """(dL/dhc, dL/dcoeff) when token n's features received ``grad[:, n // group]``.

    grad (B, G, eD) may have zero strides (one row broadcast to every group)."""
    _check(hc, coeff, weights)
    B, N, E = hc.shape
    acc = acc_dtype(hc.dtype)
    degree = coeff.shape[1]
    coeff_acc = coeff.to(acc).contiguous()
    w, ws = _weights(weights, acc, hc)
    tile = min(tile, N)
    n_tiles = triton.cdiv(N, tile)
    dh = new_output((B, N, E), hc.dtype, hc.device)
    dc = new_output((B, n_tiles, E, degree), acc, hc.device)
    be = block_e(E)
    _sums_bwd[(B, n_tiles, triton.cdiv(E, be))](
        hc, coeff_acc, w, grad, dh, dc, N, E, group, tile,
        *hc.stride(), coeff_acc.stride(0), *ws, *grad.stride(), *dh.stride(), *dc.stride(),
        HAS_W=weights is not None, DEGREE=degree, DEGREE_P2=triton.next_power_of_2(degree),
        ACC=tl_acc(acc), BLOCK_N=block_n(tile), BLOCK_E=be)
    return dh, dc.sum((0, 1)).to(coeff.dtype)


def causal_mean(hc: Tensor, coeff: Tensor, chunk: int = 64) -> Tensor:
    """Token-causal prefix mean of P, (B, N, eD) in float32 (float64 stays)."""
    _check(hc, coeff, None)
    B, N, E = hc.shape
    acc = acc_dtype(hc.dtype)
    chunk = min(chunk, triton.next_power_of_2(N))
    per_chunk = group_sums(hc, coeff, None, chunk)  # (B, n_chunks, eD)
    prefix = F.pad(per_chunk.cumsum(1)[:, :-1], (0, 0, 1, 0))  # exclusive prefix over chunks
    coeff_acc = coeff.to(acc).contiguous()
    be = block_e(E)
    out = new_output((B, N, E), acc, hc.device)
    _causal_fwd[(B, per_chunk.shape[1], triton.cdiv(E, be))](
        hc, coeff_acc, prefix, out, N, E, *hc.stride(), coeff_acc.stride(0), *prefix.stride(),
        *out.stride(), DEGREE=coeff.shape[1], ACC=tl_acc(acc), CHUNK=chunk, BLOCK_E=be)
    return out
