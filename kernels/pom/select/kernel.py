"""Triton kernel: PoM's selection (gate x state) in one pass, ready for ``ag_proj``.

Reads the selection logits (any strides: the slice of the fused ``qc_proj`` output) and
the compact state (one row per sequence, frame or token, never expanded to every token),
writes the gated input of the output projection. Reference: ``naive.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from pomstream.kernels.dispatch import new_output
from pomstream.kernels.pom.common import block_e, block_n, tl_acc


@triton.jit
def _select(hs_ptr, bias_ptr, hbar_ptr, out_ptr, T, E, ROWS, HEAD_W,
            s_sb, s_st, s_sh, s_hb, s_hr, s_he, s_ob, s_ot, s_oe,
            ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    # 64-bit batch offsets: b * stride passes 2**31 elements at 8 x 128K tokens x 2,304
    b, tb, eb = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    m2 = (offs_t < T)[:, None] & (offs_e < E)[None, :]
    head = offs_e // HEAD_W
    z = tl.load(hs_ptr + b * s_sb + offs_t[:, None] * s_st + head[None, :] * s_sh,
                mask=m2, other=0.0).to(ACC)
    z = z + tl.load(bias_ptr + head, mask=offs_e < E, other=0.0).to(ACC)[None, :]
    gate = tl.minimum(tl.maximum(z / 6.0 + 0.5, 0.0), 1.0)  # hardsigmoid
    hb = tl.load(hbar_ptr + b * s_hb + (offs_t // ROWS)[:, None] * s_hr + offs_e[None, :] * s_he,
                 mask=m2, other=0.0).to(ACC)
    tl.store(out_ptr + b * s_ob + offs_t[:, None] * s_ot + offs_e[None, :] * s_oe,
             (gate * hb).to(out_ptr.dtype.element_ty), mask=m2)


def select(hs: Tensor, bias: Tensor, hbar: Tensor, rows: int) -> Tensor:
    """Same contract as ``naive.select``."""
    B, T, H = hs.shape
    E = hbar.shape[-1]
    if E % H:
        raise ValueError(f"{H} selection heads must divide {E} state channels")
    if hbar.shape[0] not in (1, B) or hbar.shape[1] * rows < T:
        raise ValueError(f"state rows {tuple(hbar.shape)} x {rows} do not cover {T} queries")
    out = new_output((B, T, E), hs.dtype, hs.device)
    bias = bias.contiguous()
    s_hb = hbar.stride(0) if hbar.shape[0] == B else 0
    bt, be = block_n(T), block_e(E)
    _select[(B, triton.cdiv(T, bt), triton.cdiv(E, be))](
        hs, bias, hbar, out, T, E, rows, E // H, *hs.stride(), s_hb, hbar.stride(1),
        hbar.stride(2), *out.stride(),
        ACC=tl_acc(hs.dtype), BLOCK_T=bt, BLOCK_E=be)
    return out
