"""Reference (pure PyTorch) for PoM's selection: each query token gates the state.

    u[b, t, e] = hardsigmoid(hs[b, t, e // (eD/H)] + bs[e // (eD/H)]) * hbar[b, t // rows, e]

``hbar`` holds one state row per ``rows`` consecutive query tokens: one row for the whole
sequence (global mixing), one per frame, or one per token. ``u`` feeds the output
projection ``ag_proj``.
"""

from __future__ import annotations

from torch import Tensor


def hardsigmoid(z: Tensor) -> Tensor:
    """clamp(z / 6 + 1/2, 0, 1), the kernel's exact arithmetic. Not ``F.hardsigmoid``: on
    CUDA it multiplies by 1/6 rounded to float32 even for float64 inputs (relative error
    3e-8, seen on an H200 with torch 2.11), which is no reference for a float64 check."""
    return (z / 6.0 + 0.5).clamp(0.0, 1.0)


def select(hs: Tensor, bias: Tensor, hbar: Tensor, rows: int) -> Tensor:
    """hs (B, T, H), bias (H,), hbar (B or 1, R, eD) -> u (B, T, eD) in hs's dtype."""
    B, T, H = hs.shape
    E = hbar.shape[-1]
    if E % H:
        raise ValueError(f"{H} selection heads must divide {E} state channels")
    s = hardsigmoid(hs + bias.to(hs.dtype))  # (B, T, H)
    hb = hbar.to(hs.dtype)
    if hb.shape[1] == 1:  # one state row for every query: a view, not a copy
        hb = hb.expand(-1, T, -1)
    else:
        hb = (hb.repeat_interleave(rows, 1) if rows > 1 else hb)[:, :T]
    if H == E:
        return s * hb
    return (s[..., None] * hb.unflatten(-1, (H, E // H))).flatten(-2)
