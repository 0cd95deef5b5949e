"""Triton kernel: fold one chunk into the PoM states of many sequences in one launch.

One program per (sequence, channel tile): it reads the chunk's context projections,
computes the features in registers, sums them, decays and updates the carried sum and
count, and writes the mean the chunk reads. With per-position temporal states a batch of
32 sessions at 1,024 positions is 32,768 sequences of one token: one launch, no
intermediate tensor. A chunk of 512 tokens or more (a global state, a whole frame) is
first summed over many programs by the aggregation kernel, then folded in by this one:
two launches and a small sum. Reference: ``naive.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from pomstream.kernels.dispatch import new_output
from pomstream.kernels.pom.aggregate.kernel import group_sums
from pomstream.kernels.pom.common import block_e, block_n, tile_features, tl_acc
from pomstream.kernels.pom.precision import acc_dtype


@triton.jit
def _update(hc_ptr, coeff_ptr, tot_ptr, cnt_ptr, gamma_ptr, ntot_ptr, ncnt_ptr, hbar_ptr, M, ADD, E,
            s_hs, s_hm, s_he, s_ce, s_ts, s_te, s_cs, s_cc, s_ns, s_ne, s_nc, s_ncc, s_bs, s_be,
            PER_CHANNEL: tl.constexpr, HAS_DECAY: tl.constexpr, SUMMED: tl.constexpr,
            DEGREE: tl.constexpr,
            ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    s, eb = tl.program_id(0).to(tl.int64), tl.program_id(1)  # 64-bit: s * stride may pass 2**31
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    chunk = tl.zeros((BLOCK_E,), ACC)
    for n0 in range(0, M, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if SUMMED:  # hc holds the chunk's feature sums already (long chunks)
            m2 = (offs_n < M)[:, None] & mask_e[None, :]
            chunk += tl.sum(tl.load(hc_ptr + s * s_hs + offs_n[:, None] * s_hm
                                    + offs_e[None, :] * s_he, mask=m2, other=0.0).to(ACC), 0)
        else:
            p, _ = tile_features(hc_ptr, s * s_hs, offs_n, offs_e, offs_n < M, mask_e, s_hm,
                                 s_he, coeff_ptr, s_ce, DEGREE, ACC)
            chunk += tl.sum(p, 0)
    total = tl.load(tot_ptr + s * s_ts + offs_e * s_te, mask=mask_e, other=0.0).to(ACC)
    if PER_CHANNEL:
        count = tl.load(cnt_ptr + s * s_cs + offs_e * s_cc, mask=mask_e, other=0.0).to(ACC)
    else:
        count = tl.load(cnt_ptr + s * s_cs + offs_e * 0).to(ACC)  # one count, broadcast
    if HAS_DECAY:
        g = tl.load(gamma_ptr + offs_e, mask=mask_e, other=0.0).to(ACC)
        total = g * total
        count = g * count
    total = total + chunk
    count = count + ADD
    tl.store(ntot_ptr + s * s_ns + offs_e * s_ne, total, mask=mask_e)
    if PER_CHANNEL:
        tl.store(ncnt_ptr + s * s_nc + offs_e * s_ncc, count, mask=mask_e)
    else:
        tl.store(ncnt_ptr + s * s_nc + offs_e * 0, count, mask=mask_e & (offs_e == 0))
    hbar = total / tl.maximum(count, 1.0)
    tl.store(hbar_ptr + s * s_bs + offs_e * s_be, hbar.to(hbar_ptr.dtype.element_ty), mask=mask_e)


def state_update(hc: Tensor, coeff: Tensor, total: Tensor, count: Tensor,
                 gamma: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as ``naive.state_update``. A chunk of 512 tokens or more is first
    summed by the aggregation kernel (split over tokens), then folded in."""
    S, M, E = hc.shape
    if total.shape != (S, E) or count.shape not in ((S, 1), (S, E)):
        raise ValueError(f"state ({tuple(total.shape)}, {tuple(count.shape)}) does not fit "
                         f"a chunk of shape {tuple(hc.shape)}")
    if count.shape[1] == 1 and gamma is not None:  # decayed per channel from here on
        count = count.expand(S, E)
    acc = acc_dtype(torch.promote_types(total.dtype, hc.dtype))
    coeff = coeff.to(acc).contiguous()
    gamma = gamma.to(acc).contiguous() if gamma is not None else coeff.new_empty(0)
    be = block_e(E)
    rows, summed = hc, False
    if M >= 2 * 256:
        # long chunks (global state, 1,024 tokens a frame): one program per sequence and
        # channel tile would walk the chunk alone; sum it over many programs first. Decided
        # by the chunk alone, so a session's numbers do not depend on its batch.
        rows, summed = group_sums(hc, coeff, None, 256).sum(1, keepdim=True), True
    new_total = new_output((S, E), acc, hc.device)
    new_count = new_output(tuple(count.shape), acc, hc.device)
    hbar = new_output((S, E), hc.dtype, hc.device)
    _update[(S, triton.cdiv(E, be))](
        rows, coeff, total, count, gamma, new_total, new_count, hbar, rows.shape[1], M, E,
        *rows.stride(), coeff.stride(0), *total.stride(), *count.stride(), *new_total.stride(),
        *new_count.stride(), *hbar.stride(),
        PER_CHANNEL=count.shape[1] != 1, HAS_DECAY=gamma.numel() > 0, SUMMED=summed,
        DEGREE=coeff.shape[1], ACC=tl_acc(acc), BLOCK_N=block_n(rows.shape[1]), BLOCK_E=be)
    return hbar, new_total, new_count
