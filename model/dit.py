"""Video diffusion transformer with PoM token mixing (DiT-style, frame-causal).

A clip (B, F, C, H, W), in the autoencoder's space (pixels or latents, see
``ModelConfig.latent_shape``), is cut into patches: L = (H/p)*(W/p) tokens a frame. Each block
has adaLN-zero modulation from a per-frame conditioning vector (noise level + prompt),
an optional spatial PoM (each frame mixes only its own tokens), a temporal PoM (each
frame mixes itself and earlier frames, mask ``"frame_causal"``), and an MLP.

The same blocks run in two ways that give the same numbers:

- parallel (training, checking): all F frames at once, each with its own noise level;
- streaming (generation): one frame at a time, each temporal PoM reading a
  :class:`~pomstream.model.pom.PoMState` that holds every earlier frame, see
  :meth:`VideoDiT.step`.

Positions: fixed 2D sin-cos embeddings in space. Time has no absolute embedding on
purpose: a stream may run for any number of frames, and frame 1,000 must not see a
position it never saw in training. Order in time comes from the causal state and its
decay, which weights frame j by ``gamma**(f - j)``, a relative position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .pom import PoM, PoMState
from .prompts import MAX_DIGITS, parse_digit_prompt


def sincos_1d(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(..., ) positions -> (..., dim) sin-cos features."""
    half = dim // 2
    # built on the positions' device: a host-to-device copy here would break CUDA graphs
    steps = torch.arange(half, dtype=torch.float64, device=positions.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    args = positions.to(torch.float64)[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_2d(side: int, dim: int) -> Tensor:
    """(side*side, dim) fixed embedding of a square grid of patches."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    half = dim // 2
    return torch.cat([sincos_1d(ys.flatten(), half), sincos_1d(xs.flatten(), dim - half)], -1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def mlp(dim: int, hidden: int, out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                         nn.Linear(hidden, out or dim))


class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] -> (..., D)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        # float64 before scaling: in bfloat16, 0.875 * 1000 would round to 876
        freq = sincos_1d(t.to(torch.float64) * 1000.0, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class PromptEncoder(nn.Module):
    """UTF-8 bytes of the prompt -> one conditioning vector (B, D).

    Byte embeddings plus positions, one PoM layer with a padding mask and an MLP, then a
    masked mean. Small, but it reads any text; the empty prompt is the unconditional
    input used by classifier-free guidance.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.prompt_dim
        self.max_bytes = cfg.max_prompt_bytes
        self.embed = nn.Embedding(256, d)
        self.register_buffer("pos", sincos_1d(torch.arange(self.max_bytes), d).float(),
                             persistent=False)
        self.norm1 = nn.LayerNorm(d)
        self.mixer = PoM(d, cfg.degree, cfg.expand, n_sel_heads=1, coeff_init=cfg.coeff_init)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = mlp(d, 4 * d)
        self.out = nn.Linear(d, cfg.dim)

    def tokenize(self, prompts: list[str], device=None) -> tuple[Tensor, Tensor]:
        """(ids, mask), both (B, max_bytes); raises ValueError on a prompt too long."""
        ids = torch.zeros(len(prompts), self.max_bytes, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_bytes, dtype=torch.bool)
        for i, text in enumerate(prompts):
            data = text.encode("utf-8")
            if len(data) > self.max_bytes:
                raise ValueError(f"prompt is {len(data)} bytes; this model reads at most "
                                 f"{self.max_bytes}")
            ids[i, : len(data)] = torch.tensor(list(data), dtype=torch.long)
            mask[i, : len(data)] = True
        return ids.to(device), mask.to(device)

    def forward(self, prompts: list[str]) -> Tensor:
        ids, mask = self.tokenize(prompts, self.out.weight.device)
        x = self.embed(ids) + self.pos.to(self.embed.weight.dtype)  # (B, N, d)
        x = x + self.mixer(self.norm1(x), mask=mask)  # (B, N, d)
        x = x + self.mlp(self.norm2(x))  # (B, N, d)
        w = mask.to(x.dtype)[..., None]
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1)  # (B, d)
        return self.out(pooled)  # (B, D)


class DigitPromptEncoder(nn.Module):
    """A Moving-digits prompt ("digits 3 and 7") -> one conditioning vector (B, D), or
    with ``cfg.prompt_mixer`` that vector and one token per named digit (B, 1 + 3, D).

    The prompt is parsed by :func:`model.prompts.parse_digit_prompt` (anything outside
    its grammar is a :class:`~pomstream.model.prompts.PromptError`) into how often each digit is
    named and how many digits there are; each digit and the count have a learned vector,
    their sum goes through an MLP (with ``cfg.prompt_pooled == "count"``, the count's
    vector alone). The empty prompt (count 0) is the unconditional input.

    Digit tokens (for the blocks' cross-PoM, see :func:`split_cond`): row 1 + i is the
    learned token of the i-th named digit; rows of digits not named are exact zeros
    (the padding the cross-PoM masks out), so the empty prompt has none.

    With ``cfg.prompt_order == "left_to_right"`` the order counts: a learned vector for
    each (place, digit) joins the pooled sum, and a learned vector for each place joins
    its digit's token. Both start at zero, so a model without them grows into one
    (model.grow) computing what it did.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.prompt_dim
        self.rules = cfg.prompt_rules
        self.digit = nn.Embedding(10, d) if cfg.prompt_pooled == "set" else None
        self.count = nn.Embedding(MAX_DIGITS + 1, d)
        self.mlp = mlp(d, 4 * d, cfg.dim)
        # unit-scale tokens (nn.Embedding's N(0, 1)): never all zeros, the padding value
        self.token = nn.Embedding(10, cfg.dim) if cfg.prompt_mixer else None
        self.placed = self.place = None
        if cfg.prompt_order == "left_to_right":
            self.placed = nn.Embedding(MAX_DIGITS * 10, d)  # row 10 * place + digit
            nn.init.zeros_(self.placed.weight)
            if cfg.prompt_mixer:
                self.place = nn.Embedding(MAX_DIGITS, cfg.dim)
                nn.init.zeros_(self.place.weight)

    def forward(self, prompts: list[str]) -> Tensor:
        w = self.count.weight
        named = []
        for text in prompts:
            self.rules.check(text)  # its length first, then the grammar, as the API does
            named.append(parse_digit_prompt(text))
        counts = torch.zeros(len(prompts), 10)  # how often each digit is named
        ids = torch.full((len(prompts), MAX_DIGITS), -1, dtype=torch.long)
        for i, digits in enumerate(named):
            for digit in digits:
                counts[i, digit] += 1
            ids[i, : len(digits)] = torch.tensor(digits, dtype=torch.long)
        n = counts.sum(1).long().to(w.device)
        pooled = self.count(n)
        if self.digit is not None:
            pooled = pooled + counts.to(w) @ self.digit.weight
        ids = ids.to(w.device)
        named_mask = (ids >= 0)[..., None]  # (B, 3, 1)
        places = torch.arange(MAX_DIGITS, device=w.device)
        if self.placed is not None:
            rows = 10 * places + ids.clamp_min(0)
            pooled = pooled + (self.placed(rows) * named_mask).sum(1)
        pooled = self.mlp(pooled)  # (B, D)
        if self.token is None:
            return pooled
        tokens = self.token(ids.clamp_min(0))
        if self.place is not None:
            tokens = tokens + self.place(places)
        tokens = tokens * named_mask  # (B, 3, D)
        return torch.cat([pooled[:, None], tokens.to(pooled.dtype)], 1)  # (B, 4, D)


def split_cond(cond: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """A prompt encoding -> (pooled vector (B, D), digit tokens (B, K, D) or None, their
    mask (B, K), True = a named digit, or None). (B, D) encodings have no tokens."""
    if cond.ndim == 2:
        return cond, None, None
    tokens = cond[:, 1:]
    return cond[:, 0], tokens, tokens.ne(0).any(-1)


PROMPT_ENCODERS = {"bytes": PromptEncoder, "digits": DigitPromptEncoder}


class MixFFN(nn.Module):
    """MLP whose input first gets a depthwise 3x3 convolution over the frame's patch grid:
    local mixing (neighbouring patches) next to PoM's global mixing. It reads only its own
    frame, so streaming is unchanged. (On the input width, not the hidden one: 4x cheaper.)
    """

    def __init__(self, dim: int, hidden: int, side: int):
        super().__init__()
        self.side = side
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F, L, D) with L = side * side."""
        B, n_frames, L, _ = x.shape
        g = x.flatten(0, 1).transpose(1, 2).unflatten(2, (self.side, self.side))
        g = self.dw(g).flatten(2).transpose(1, 2).unflatten(0, (B, n_frames))  # (B, F, L, D)
        return self.fc2(F.gelu(self.fc1(x + g), approximate="tanh"))


class Block(nn.Module):
    """adaLN-zero block: [spatial PoM], temporal PoM, MLP [with a local conv], each gated
    from the conditioning."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        pom_args = dict(degree=cfg.degree, expand=cfg.expand, n_sel_heads=cfg.n_sel_heads,
                        coeff_init=cfg.coeff_init)
        self.spatial = PoM(d, **pom_args) if cfg.spatial_mixer else None
        self.temporal = PoM(d, **pom_args, temporal_decay=cfg.temporal_decay,
                            decay_max=cfg.decay_max)
        hidden = int(d * cfg.mlp_ratio)
        side = cfg.latent_shape[1] // cfg.patch
        self.mlp = MixFFN(d, hidden, side) if cfg.local_mixer else mlp(d, hidden)
        self.per_position = cfg.temporal_mixer == "per_position"
        self.positions = side * side
        self.n_branches = 3 if cfg.spatial_mixer else 2
        # the prompt's cross-PoM has its own adaLN layer, so that a trained model without
        # it can be grown into one (model.grow) and the new tensors trained apart. Its
        # coefficients start at +-1, not cfg.coeff_init: grown into a trained model,
        # where the other branches' outputs are O(1), a branch starting ~10x smaller
        # barely moved in 1,000 steps (docs/demo-training.md, runs demo-v4*)
        self.cross = PoM(d, **{**pom_args, "coeff_init": 1.0}) if cfg.prompt_mixer else None
        self.cross_ada = nn.Linear(d, 3 * d) if cfg.prompt_mixer else None
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(d, 3 * self.n_branches * d)

    def forward(self, x: Tensor, c: Tensor, state: PoMState | None = None,
                prompt: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, PoMState | None]:
        """x (B, F, L, D), c (B, F, D); ``prompt``: digit tokens (B, K, D) and their mask
        (B, K) for the cross-PoM. With ``state``, F must be 1 (streaming)."""
        B, n_frames, L, D = x.shape
        mods = self.ada(F.silu(c))[:, :, None].chunk(3 * self.n_branches, -1)  # (B, F, 1, D) each
        new_state = None

        def temporal(h: Tensor) -> Tensor:  # (B, F, L, D) -> (B, F, L, D)
            nonlocal new_state
            if self.per_position:  # each position its own sequence along time
                seqs = h.transpose(1, 2).flatten(0, 1)  # (B*L, F, D)
                if state is None:
                    y = self.temporal(seqs, mask="frame_causal", frame_tokens=1)
                else:
                    if n_frames != 1:
                        raise ValueError("streaming runs one frame at a time")
                    # every position has seen the same frames: one count (B, 1, w) serves
                    # all L positions, only the sums are per position (B, L, eD)
                    count = state.count.expand(B, L, -1).reshape(B * L, -1)
                    y, st = self.temporal.state_forward(
                        seqs, PoMState(state.total.reshape(B * L, -1), count))
                    new_state = PoMState(st.total.reshape(B, L, -1),
                                         st.count.reshape(B, L, -1)[:, :1].clone())
                return y.unflatten(0, (B, L)).transpose(1, 2)
            if state is None:
                return self.temporal(h.flatten(1, 2), mask="frame_causal", frame_tokens=L
                                     ).view_as(h)
            if n_frames != 1:
                raise ValueError("streaming runs one frame at a time")
            y, new_state = self.temporal.state_forward(h.flatten(1, 2), state)
            return y.view_as(h)

        branches = [temporal, self.mlp]
        if self.spatial is not None:
            branches.insert(0, lambda h: self.spatial(h.flatten(1, 2), mask="frame",
                                                      frame_tokens=L).view_as(h))
        for i, fn in enumerate(branches):
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            x = x + gate * fn(modulate(self.norm(x), shift, scale))  # (B, F, L, D)
        if self.cross is not None:
            if prompt is None:
                raise ValueError("this model mixes in the prompt's digit tokens: pass them")
            tokens, present = prompt
            shift, scale, gate = self.cross_ada(F.silu(c))[:, :, None].chunk(3, -1)
            h = modulate(self.norm(x), shift, scale).flatten(1, 2)
            x = x + gate * self.cross(h, tokens.to(h.dtype), mask=present).view_as(x)
        return x, new_state


class VideoDiT(nn.Module):
    """Predicts the rectified-flow velocity (noise - clean) of every frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch
        c, size, _ = cfg.latent_shape
        self.side = size // p
        self.patch_embed = nn.Linear(c * p * p, d)
        self.register_buffer("pos", sincos_2d(self.side, d).float(), persistent=False)
        self.t_embed = TimestepEmbedder(d)
        self.prompt = PROMPT_ENCODERS[cfg.prompt_encoder](cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, c * p * p)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for blk in self.blocks:  # adaLN-zero: every block starts as the identity
            for ada in (blk.ada, blk.cross_ada):
                if ada is not None:
                    nn.init.zeros_(ada.weight)
                    nn.init.zeros_(ada.bias)
        for m in (self.final_ada, self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- shapes ----------------------------------------------------------------------------
    def patchify(self, x: Tensor) -> Tensor:
        """(B, F, C, H, W) -> (B, F, L, C*p*p)."""
        p, s = self.cfg.patch, self.side
        x = x.unflatten(3, (s, p)).unflatten(5, (s, p))  # (B, F, C, s, p, s, p)
        return x.permute(0, 1, 3, 5, 2, 4, 6).flatten(2, 3).flatten(3)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, F, L, C*p*p) -> (B, F, C, H, W)."""
        p, s, c = self.cfg.patch, self.side, self.cfg.latent_shape[0]
        x = x.unflatten(2, (s, s)).unflatten(4, (c, p, p))  # (B, F, s, s, C, p, p)
        return x.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    # -- conditioning ------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """(B, D) prompt vectors, or (B, 1 + K, D) with digit tokens (``split_cond``);
        cache them, they do not change between frames."""
        return self.prompt(prompts)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Parallel frame-causal forward: x (B, F, C, H, W), t (B, F), cond from
        :meth:`encode_prompts`."""
        v, _ = self._run(x, t, cond, None)
        return v

    def step(self, x: Tensor, t: Tensor, cond: Tensor, states: list[PoMState]
             ) -> tuple[Tensor, list[PoMState]]:
        """One frame against the carried states: x (B, C, H, W), t (B,), cond as in
        :meth:`forward`.

        Returns the velocity (B, C, H, W) and the states with this frame folded in (keep
        them only for the final, clean pass of a frame).
        """
        v, new = self._run(x[:, None], t[:, None], cond, states)
        return v[:, 0], new

    def empty_states(self, batch: int, device=None, dtype=torch.float32) -> list[PoMState]:
        """Per block: (batch, eD) sums and (batch, 1 or eD) counts; with per-position
        states (batch, L, eD) sums and (batch, 1, 1 or eD) counts (the same for every
        position, stored once)."""
        states = []
        for b in self.blocks:
            st = b.temporal.empty_state(batch, device, dtype)
            if b.per_position:  # sums per position, one count for them all
                st = PoMState(st.total.new_zeros(batch, b.positions, st.total.shape[-1]),
                              st.count[:, None])
            states.append(st)
        return states

    def _run(self, x: Tensor, t: Tensor, cond: Tensor, states: list[PoMState] | None):
        dtype = self.patch_embed.weight.dtype
        h = self.patch_embed(self.patchify(x.to(dtype))) + self.pos.to(dtype)  # (B, F, L, D)
        pooled, tokens, present = split_cond(cond)
        prompt = None if tokens is None else (tokens.to(dtype), present)
        c_t, c_p = self.t_embed(t), pooled[:, None].to(dtype)  # (B, F, D), (B, 1, D)
        if self.cfg.cond_norm:  # both parts the same size, however the embeddings grow
            c_t, c_p = F.layer_norm(c_t, c_t.shape[-1:]), F.layer_norm(c_p, c_p.shape[-1:])
        c = c_t + c_p  # (B, F, D)
        new_states = []
        for i, blk in enumerate(self.blocks):
            h, st = blk(h, c, None if states is None else states[i], prompt)  # (B, F, L, D)
            new_states.append(st)
        shift, scale = self.final_ada(F.silu(c))[:, :, None].chunk(2, -1)  # (B, F, 1, D)
        out = self.final(modulate(self.final_norm(h), shift, scale))  # (B, F, L, C*p*p)
        return self.unpatchify(out), new_states  # (B, F, C, H, W)

