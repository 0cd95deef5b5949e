"""The Polynomial Mixer (PoM), the token mixer that replaces attention in pomstream.

PoM folds a sequence of context tokens into one vector per sequence: each token is
projected to ``e*D`` channels, passed through a clamped leaky ReLU and a learned
polynomial without constant term, and averaged.  Each query token then gates that
average (the *state*) with a hard-sigmoid selection and projects it back to ``D``::

    hc   = xc @ Wc^T                       # (B, N, eD)
    a    = clamp(leaky_relu(hc, .01), -.1, 6)
    P    = sum_j C[:, j] * a**j            # (B, N, eD)
    hbar = mean_n P                        # (B, 1, eD)  <- the state
    s    = hardsigmoid(xq @ Ws^T + bs)     # (B, T, eD), or (B, T, H) gating H blocks
    y    = (s * hbar) @ Wo^T               # (B, T, D)

Parameter layout follows the authors' reference so that their weights load with
``load_state_dict``: ``qc_proj.weight`` stacks the ``eD`` rows of ``Wc`` first and the
selection rows of ``Ws`` after them; ``se_bias`` is ``bs``; ``po_coeff`` is ``C``
(eD x degree); ``ag_proj.weight`` is ``Wo``.

Masks only change *which tokens are averaged*, so every mode is a (weighted) sum and a
count, never an N x N matrix except for an explicit (B, T, N) cross-mixing mask:

- ``None``: global mean;
- ``"causal"``: prefix mean, token t sees tokens <= t;
- ``"frame"``: each frame of ``frame_tokens`` tokens sees only itself (a spatial mixer);
- ``"frame_causal"``: each frame sees itself and every earlier frame (a prefix over
  per-frame sums); with ``temporal_decay`` frame j is weighted ``gamma**(f - j)``;
- a boolean ``(B, N)`` padding mask or ``(B, T, N)`` mask (True = attend).

A row that sees no token gets a zero state, hence a zero output, never NaN.

Streaming: :meth:`PoM.state_forward` folds chunks into a :class:`PoMState` holding the
running *sum* of features and the running *token count*.  Weighting by tokens (not by
chunks) is what makes chunks of any size reproduce the block-causal forward exactly.
With ``temporal_decay`` each call is one frame: the carried sum and count are multiplied
by ``gamma`` before the frame is added, which is the streaming form of the decayed
``"frame_causal"`` mode.  The decay keeps the state stationary over arbitrarily long
videos: frame f's own weight tends to ``1 - gamma`` instead of ``1 / (f + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pomstream.kernels.pom import ops
from pomstream.kernels.pom.aggregate.naive import features
from pomstream.kernels.pom.precision import acc_dtype

MaskArg = Tensor | str | None
_MODES = ("causal", "frame", "frame_causal")


@dataclass
class PoMState:
    """What a PoM layer carries between chunks for a batch of sequences.

    ``total``: (B, eD) sum of the polynomial features of every token seen (decayed).
    ``count``: (B, 1) number of tokens seen, or (B, eD) when a per-channel decay applies.
    (A video DiT with per-position temporal states keeps (B, L, eD) sums and one
    (B, 1, 1 or eD) count for all L positions, see ``VideoDiT.empty_states``.)
    """

    total: Tensor
    count: Tensor

    @staticmethod
    def cat(states: list[PoMState]) -> PoMState:
        return PoMState(torch.cat([s.total for s in states]), torch.cat([s.count for s in states]))

    def to_dtype(self, dtype: torch.dtype) -> PoMState:
        return PoMState(self.total.to(dtype), self.count.to(dtype))

    def split(self) -> list[PoMState]:
        return [PoMState(t[None], c[None]) for t, c in zip(self.total, self.count, strict=True)]


class PoM(nn.Module):
    """Polynomial Mixer, a drop-in replacement for multi-head attention.

    Args:
        dim: model width D.
        degree: polynomial degree k (no constant term).
        expand: expansion e of the state, eD channels.
        n_sel_heads: H selection heads; H <= 1 gates every channel separately.
        temporal_decay: learn a per-channel decay ``gamma`` of the carried state, applied
            once per frame in ``"frame_causal"`` mode and once per ``state_forward`` call.
        decay_max: upper bound of ``gamma``; ``1 / (1 - decay_max)`` bounds the memory in
            frames, which keeps the state in the regime seen on short training clips.
        decay_init: initial ``gamma``.
        coeff_init: polynomial coefficients start uniform in +-coeff_init (the paper: tiny).
    """

    def __init__(
        self,
        dim: int,
        degree: int = 2,
        expand: int = 2,
        n_sel_heads: int = 1,
        temporal_decay: bool = False,
        decay_max: float = 0.9,
        decay_init: float = 0.6,
        coeff_init: float = 1e-3,
    ):
        super().__init__()
        if degree < 1 or expand < 1 or dim < 1:
            raise ValueError(f"dim, degree and expand must be >= 1, got {dim}, {degree}, {expand}")
        inner = expand * dim
        n_sel = n_sel_heads if n_sel_heads > 1 else inner
        if inner % n_sel:
            raise ValueError(f"n_sel_heads={n_sel_heads} must divide expand*dim={inner}")
        self.dim, self.degree, self.expand = dim, degree, expand
        self.inner, self.n_sel = inner, n_sel
        self.qc_proj = nn.Linear(dim, inner + n_sel, bias=False)
        self.se_bias = nn.Parameter(torch.zeros(n_sel))
        self.po_coeff = nn.Parameter(torch.empty(inner, degree).uniform_(-coeff_init, coeff_init))
        self.ag_proj = nn.Linear(inner, dim, bias=False)
        self.decay_max = decay_max
        if temporal_decay:
            if not 0.0 < decay_init < decay_max <= 1.0:
                raise ValueError("need 0 < decay_init < decay_max <= 1")
            logit = math.log(decay_init / (decay_max - decay_init))
            self.decay_logit = nn.Parameter(torch.full((inner,), logit))
        else:
            self.register_parameter("decay_logit", None)

    # -- pieces -----------------------------------------------------------------------
    @property
    def temporal_decay(self) -> bool:
        return self.decay_logit is not None

    def decay(self) -> Tensor | None:
        """Per-channel ``gamma`` in (0, decay_max), or None without temporal decay."""
        if self.decay_logit is None:
            return None
        return self.decay_max * torch.sigmoid(self.decay_logit)

    def features(self, hc: Tensor) -> Tensor:
        """Polynomial features P of the context projection (Horner form)."""
        return features(hc, self.po_coeff)

    def _project(self, xq: Tensor, xc: Tensor | None) -> tuple[Tensor, Tensor]:
        """(hc, hs): context projection and selection logits, one GEMM when self-mixing."""
        if xc is None:
            h = self.qc_proj(xq)
            return h[..., : self.inner], h[..., self.inner :]
        w = self.qc_proj.weight
        return F.linear(xc, w[: self.inner]), F.linear(xq, w[self.inner :])

    # -- parallel forward ---------------------------------------------------------------
    def forward(self, xq: Tensor, xc: Tensor | None = None, mask: MaskArg = None,
                frame_tokens: int | None = None) -> Tensor:
        """Mix ``xc`` (default ``xq``) into every query token of ``xq``.

        xq: (B, T, D); xc: (B, N, D); mask: see the module docstring; ``frame_tokens``
        is the token count of one frame for the ``"frame"`` and ``"frame_causal"`` modes.
        """
        hc, hs = self._project(xq, xc)  # (B, N, eD), (B, T, H)
        hbar, rows = self.mix(hc, mask, frame_tokens, n_query=hs.shape[1])
        return self.ag_proj(ops.select(hs, self.se_bias, hbar, rows))  # (B, T, D)

    def mix(self, hc: Tensor, mask: MaskArg, frame_tokens: int | None, n_query: int
            ) -> tuple[Tensor, int]:
        """Average the features of ``hc`` (B, N, eD) as the mask says.

        Returns ``(hbar, rows)``: the states (B, R, eD), compact, one row per ``rows``
        consecutive query tokens (R = 1 for a global or padded mean, one per frame, or one
        per token), in float32 (float64 stays).
        """
        B, N, E = hc.shape
        coeff = self.po_coeff
        rows_all = max(n_query, 1)
        if mask is None:
            return ops.feature_sums(hc, coeff) / N, rows_all
        if isinstance(mask, str):
            if mask not in _MODES:
                raise ValueError(f"unknown mask mode {mask!r}; expected one of {_MODES}")
            if n_query != N:
                raise ValueError(f"mask {mask!r} needs as many queries as context tokens")
            if mask == "causal":
                return ops.causal_mean(hc, coeff), 1
            if not frame_tokens or N % frame_tokens:
                raise ValueError(f"frame_tokens={frame_tokens} must divide the {N} tokens")
            frames = ops.feature_sums(hc, coeff, frame_tokens)  # (B, F, eD)
            if mask == "frame":
                return frames / frame_tokens, frame_tokens
            return self._frame_prefix(frames, frame_tokens), frame_tokens
        mask = mask.to(device=hc.device)
        if mask.dtype != torch.bool:
            raise TypeError("a tensor mask must be boolean (True = mix this token)")
        if mask.shape == (B, N):
            w = mask.to(acc_dtype(hc.dtype))
            total = ops.feature_sums(hc, coeff, weights=w)  # (B, 1, eD)
            return total / w.sum(1)[:, None, None].clamp_min(1), rows_all
        if mask.shape == (B, n_query, N):
            p = ops.feature_sums(hc, coeff, 1)  # (B, N, eD): one token per group
            w = mask.to(p.dtype)
            return torch.bmm(w, p) / w.sum(2)[..., None].clamp_min(1), 1  # (B, T, eD)
        raise ValueError(f"mask of shape {tuple(mask.shape)} fits neither (B, N) = "
                         f"{(B, N)} nor (B, T, N) = {(B, n_query, N)}")

    def _frame_prefix(self, frames: Tensor, frame_tokens: int) -> Tensor:
        """Mean over frames <= f of per-frame sums (B, F, eD), decayed when configured."""
        gamma = self.decay()
        n_frames = frames.shape[1]
        if gamma is None:
            n = torch.arange(1, n_frames + 1, device=frames.device, dtype=frames.dtype)
            return frames.cumsum(1) / (n[:, None] * frame_tokens)
        gamma = gamma.to(frames.dtype)
        total, count, out = None, None, []
        for f in range(n_frames):
            if total is None:
                total, count = frames[:, 0], torch.full_like(gamma, float(frame_tokens))
            else:
                total, count = gamma * total + frames[:, f], gamma * count + frame_tokens
            out.append(total / count)
        return torch.stack(out, 1)

    # -- streaming ------------------------------------------------------------------------
    def empty_state(self, batch: int, device=None, dtype=torch.float32) -> PoMState:
        width = self.inner if self.temporal_decay else 1
        return PoMState(torch.zeros(batch, self.inner, device=device, dtype=dtype),
                        torch.zeros(batch, width, device=device, dtype=dtype))

    def state_forward(self, x: Tensor, state: PoMState | None = None) -> tuple[Tensor, PoMState]:
        """Mix one chunk (B, m, D) with everything folded into ``state`` before it.

        Every token of the chunk sees the whole chunk and all earlier chunks, so feeding
        a sequence chunk by chunk gives exactly the block-causal forward. Returns the
        output (B, m, D) and the state with the chunk folded in; ``state`` is not changed.
        """
        B, m, _ = x.shape
        if state is None:
            state = self.empty_state(B, x.device, acc_dtype(x.dtype))  # bf16 net: f32 state
        hc, hs = self._project(x, None)  # (B, m, eD), (B, m, H)
        # the sums accumulate in the wider of the state's dtype and float32: a bf16 network
        # keeps a float32 state, which thousands of frames of sums would otherwise erode
        hbar, total, count = ops.state_update(hc, self.po_coeff, state.total, state.count,
                                              self.decay())
        return self.ag_proj(ops.select(hs, self.se_bias, hbar[:, None], m)), PoMState(total, count)
