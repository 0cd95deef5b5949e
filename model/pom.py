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

MaskArg = Tensor | str | None
_MODES = ("causal", "frame", "frame_causal")


@dataclass
class PoMState:
    """What a PoM layer carries between chunks for a batch of sequences.

    ``total``: (B, eD) sum of the polynomial features of every token seen (decayed).
    ``count``: (B, 1) number of tokens seen, or (B, eD) when a per-channel decay applies.
    """

    total: Tensor
    count: Tensor

    @staticmethod
    def cat(states: list[PoMState]) -> PoMState:
        return PoMState(torch.cat([s.total for s in states]), torch.cat([s.count for s in states]))

    def to_dtype(self, dtype: torch.dtype) -> PoMState:
        return PoMState(self.total.to(dtype), self.count.to(dtype))

    def reshape_batch(self, *shape: int) -> PoMState:
        """The same sums with the leading (batch) dimension(s) reshaped to ``shape``, e.g.
        (B, L) -> (B*L,) and back for per-position states."""
        return PoMState(self.total.reshape(*shape, self.total.shape[-1]),
                        self.count.reshape(*shape, self.count.shape[-1]))

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
        a = F.leaky_relu(hc, 0.01).clamp(-0.1, 6.0)
        coeff = self.po_coeff.to(a.dtype)
        p = coeff[:, -1]
        for j in range(self.degree - 2, -1, -1):
            p = coeff[:, j] + a * p
        return a * p

    def _project(self, xq: Tensor, xc: Tensor | None) -> tuple[Tensor, Tensor]:
        """(hc, hs): context projection and selection logits, one GEMM when self-mixing."""
        if xc is None:
            h = self.qc_proj(xq)
            return h[..., : self.inner], h[..., self.inner :]
        w = self.qc_proj.weight
        return F.linear(xc, w[: self.inner]), F.linear(xq, w[self.inner :])

    def _select(self, hs: Tensor, hbar: Tensor) -> Tensor:
        s = F.hardsigmoid(hs + self.se_bias)  # (B, T, H)
        if self.n_sel != self.inner:
            shape = torch.broadcast_shapes(hbar.shape[:-1], s.shape[:-1])
            hbar = hbar.expand(*shape, self.inner).unflatten(-1, (self.n_sel, -1))
            return self.ag_proj((s.expand(*shape, self.n_sel)[..., None] * hbar).flatten(-2))
        return self.ag_proj(s * hbar)

    # -- parallel forward ---------------------------------------------------------------
    def forward(self, xq: Tensor, xc: Tensor | None = None, mask: MaskArg = None,
                frame_tokens: int | None = None) -> Tensor:
        """Mix ``xc`` (default ``xq``) into every query token of ``xq``.

        xq: (B, T, D); xc: (B, N, D); mask: see the module docstring; ``frame_tokens``
        is the token count of one frame for the ``"frame"`` and ``"frame_causal"`` modes.
        """
        hc, hs = self._project(xq, xc)  # (B, N, eD), (B, T, H)
        p = self.features(hc)  # (B, N, eD)
        hbar = self.mix(p, mask, frame_tokens, n_query=hs.shape[1])  # (B, T or 1, eD)
        return self._select(hs, hbar)  # (B, T, D)

    def mix(self, p: Tensor, mask: MaskArg, frame_tokens: int | None, n_query: int) -> Tensor:
        """Average the features ``p`` (B, N, eD) as the mask says; (B, T or 1, eD)."""
        B, N, E = p.shape
        if mask is None:
            return p.mean(1, keepdim=True)
        if isinstance(mask, str):
            if mask not in _MODES:
                raise ValueError(f"unknown mask mode {mask!r}; expected one of {_MODES}")
            if n_query != N:
                raise ValueError(f"mask {mask!r} needs as many queries as context tokens")
            if mask == "causal":
                n = torch.arange(1, N + 1, device=p.device, dtype=p.dtype)[:, None]
                return p.cumsum(1) / n
            if not frame_tokens or N % frame_tokens:
                raise ValueError(f"frame_tokens={frame_tokens} must divide the {N} tokens")
            frames = p.unflatten(1, (N // frame_tokens, frame_tokens)).sum(2)  # (B, F, eD)
            if mask == "frame":
                hbar = frames / frame_tokens
            else:
                hbar = self._frame_prefix(frames, frame_tokens)
            return hbar.repeat_interleave(frame_tokens, dim=1)  # (B, N, eD)
        mask = mask.to(device=p.device)
        if mask.dtype != torch.bool:
            raise TypeError("a tensor mask must be boolean (True = mix this token)")
        w = mask.to(p.dtype)
        if mask.shape == (B, N):
            total = torch.einsum("bn,bne->be", w, p)[:, None]  # (B, 1, eD)
            count = w.sum(1)[:, None, None]
        elif mask.shape == (B, n_query, N):
            total = torch.bmm(w, p)  # (B, T, eD)
            count = w.sum(2)[..., None]
        else:
            raise ValueError(f"mask of shape {tuple(mask.shape)} fits neither (B, N) = "
                             f"{(B, N)} nor (B, T, N) = {(B, n_query, N)}")
        return total / count.clamp_min(1)

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
            state = self.empty_state(B, x.device, x.dtype)
        hc, hs = self._project(x, None)  # (B, m, eD), (B, m, H)
        # accumulate in the wider of the state's and the compute dtype: a bf16 network
        # keeps a float32 state, which thousands of frames of sums would otherwise erode
        acc = torch.promote_types(state.total.dtype, hc.dtype)
        chunk = self.features(hc).sum(1).to(acc)  # (B, eD)
        total, count = state.total.to(acc), state.count.to(acc)
        gamma = self.decay()
        if gamma is not None:
            gamma = gamma.to(acc)
            total, count = gamma * total, gamma * count
        new = PoMState(total + chunk, count + m)
        hbar = (new.total / new.count.clamp_min(1))[:, None].to(hc.dtype)  # (B, 1, eD)
        return self._select(hs, hbar), new
