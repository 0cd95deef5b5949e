"""Streaming generation: one frame at a time from a state of constant size.

A :class:`StreamSession` is one video being generated: its prompt, its random generator
and, for each block, the :class:`~pomstream.model.pom.PoMState` of every frame made so far. Frame
f is made by the sampler, every step running the network on frame f's tokens alone
against the fixed states of frames < f; then one more pass over the finished frame
(noise level ``context_noise``, 0 by default) folds it into the states. The cost of a
frame is ``steps * evals + 1`` passes over one frame, the same at frame 1,000 as at 10.

With classifier-free guidance the session keeps a second set of states, built from the
same frames with the empty prompt, so the unconditional branch sees the history the
unconditional model would have seen.

:meth:`StreamGenerator.step` advances many sessions in batched calls (sessions with the
same sampler settings share every network call); each session draws its noise from its
own generator, so a session makes the same frames batched or alone.

Snapshots (:meth:`StreamSession.snapshot`) are self-describing bytes: a header with the
format version, the model's config fingerprint and weights digest, the frame index, the
prompt and the sampling parameters, then the RNG state and every state tensor. Restored
into the same model, in any process, a session continues bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .autoencoder import build_autoencoder
from .diffusion import SAMPLERS, guided, make_sampler
from .dit import VideoDiT
from .files import weights_digest
from .frame_step import FrameStep
from .layers import LayeredSession, composite, is_layers_snapshot
from .pom import PoMState
from .prompts import LAYERS
from .snapshots import SnapshotError, pack, unpack

SNAPSHOT_MAGIC = b"POMSNAP\x00"
SNAPSHOT_VERSION = 2  # 2: per-position states store one count per session, not per position
READABLE_VERSIONS = (1, 2)  # a version-1 snapshot's per-position counts are folded to one


@dataclass(frozen=True)
class GenerationParams:
    steps: int = 8
    sampler: str = "euler"
    guidance: float = 1.0
    context_noise: float = 0.0
    # sampling steps of frame 0, the frame with only the prompt to go on (0: ``steps``).
    # A stream keeps what its first frame drew, so a better frame 0 lifts the whole
    # stream, and it costs its extra passes once, not every frame (README model card)
    first_steps: int = 0
    # guidance of frame 0 (None: ``guidance``). Later frames also have their past to go
    # on and take a stronger pull to the prompt than frame 0 does, whose first draw it
    # is (docs/demo-training.md, "Guidance 6 after frame 0")
    first_guidance: float | None = None
    # "joint": the network draws the whole prompt in one stream; "digits" (models that
    # read the digits grammar): one stream per named digit, their frames laid over each
    # other, as the training clips are made (model/layers.py)
    layers: str = "joint"

    def __post_init__(self):
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be in 1..1000, got {self.steps}")
        if not 0 <= self.first_steps <= 1000:
            raise ValueError(f"first_steps must be in 0..1000 (0: steps), got {self.first_steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if not 0.0 <= self.guidance <= 50.0:
            raise ValueError(f"guidance must be in [0, 50], got {self.guidance}")
        if self.first_guidance is not None and not 0.0 <= self.first_guidance <= 50.0:
            raise ValueError("first_guidance must be in [0, 50] (None: guidance), got "
                             f"{self.first_guidance}")
        if self.layers not in LAYERS:
            raise ValueError(f"layers must be one of {list(LAYERS)}, got {self.layers!r}")
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"context_noise must be in [0, 1), got {self.context_noise}")

    def cfg_at(self, frame_index: int) -> bool:
        """Whether frame ``frame_index`` runs the unconditional branch: when it or a later
        frame is guided (the session keeps unconditional states until then; with guidance
        on frame 0 alone, they are dropped after it)."""
        if self.guidance != 1.0:
            return True
        return frame_index == 0 and self.first_guidance not in (None, 1.0)

    def guidance_at(self, frame_index: int) -> float:
        """Guidance scale of frame ``frame_index``."""
        if frame_index == 0 and self.first_guidance is not None:
            return self.first_guidance
        return self.guidance

    def steps_at(self, frame_index: int) -> int:
        """Sampling steps of frame ``frame_index``."""
        return self.first_steps if frame_index == 0 and self.first_steps else self.steps

    def batch_key(self, frame_index: int = 1) -> tuple:
        """Sessions whose next frame has the same key share every network call."""
        return (self.steps_at(frame_index), self.sampler, self.context_noise,
                self.cfg_at(frame_index))


class StreamSession:
    """One video being generated; create it with :meth:`StreamGenerator.session`."""

    def __init__(self, generator: StreamGenerator, prompt: str, seed: int,
                 params: GenerationParams):
        self.generator = generator
        self.params = params
        self.seed = seed
        self.frame_index = 0
        self.last_latent: Tensor | None = None  # (C, h, w) of the last frame, before decoding
        self.rng = torch.Generator(device="cpu")
        self.rng.manual_seed(seed)
        self.states = generator.model.empty_states(1, generator.device, generator.state_dtype)
        self.states_uncond = (generator.model.empty_states(1, generator.device,
                                                           generator.state_dtype)
                              if params.cfg_at(0) else None)
        self.prompt = ""
        self.set_prompt(prompt)

    def set_prompt(self, prompt: str) -> None:
        """Change what the next frames show; the history (the states) is kept."""
        self._cond = self.generator.encode_prompt(prompt)  # validates the length
        self.prompt = prompt

    def next_frame(self) -> np.ndarray:
        """The next frame, uint8 RGB (H, W, 3)."""
        return self.generator.step([self])[0]

    def fork(self, seed: int | None = None) -> StreamSession:
        """An independent copy; with ``seed`` its random stream is re-seeded (a variation)."""
        other = self.generator.restore(self.snapshot())
        if seed is not None:
            other.rng.manual_seed(seed)
            other.seed = seed
        return other

    @property
    def state_bytes(self) -> int:
        """Bytes of carried state (independent of the frame index)."""
        sets = [self.states] + ([self.states_uncond] if self.states_uncond else [])
        return sum(t.numel() * t.element_size() for s in sets for st in s
                   for t in (st.total, st.count))

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        header = {
            "format": "pomstream.session",
            "version": SNAPSHOT_VERSION,
            "config": self.generator.model.cfg.fingerprint(),
            "model": self.generator.model.cfg.name,
            "weights": self.generator.digest,
            "frame_index": self.frame_index,
            "prompt": self.prompt,
            "seed": self.seed,
            # "layers" only when not the default: builds before it read these snapshots
            "params": {k: v for k, v in asdict(self.params).items()
                       if k != "layers" or v != "joint"},
        }
        tensors = {"rng": self.rng.get_state()}
        for name, states in (("cond", self.states), ("uncond", self.states_uncond)):
            for i, st in enumerate(states or []):
                tensors[f"{name}.{i}.total"] = st.total.detach().cpu().contiguous()
                tensors[f"{name}.{i}.count"] = st.count.detach().cpu().contiguous()
        return pack(SNAPSHOT_MAGIC, header, st_save(tensors))

    def restore(self, data: bytes) -> None:
        """Replace this session's whole state with a snapshot of the same model."""
        header, tensors = _parse_snapshot(data)
        gen = self.generator
        if header["config"] != gen.model.cfg.fingerprint():
            raise SnapshotError(f"snapshot is of model {header['model']!r} with another "
                                f"architecture than the loaded {gen.model.cfg.name!r}")
        if header["weights"] != gen.digest:
            raise SnapshotError("snapshot was made with other weights than the loaded model's")
        try:
            params = GenerationParams(**header["params"])
            depth = len(gen.model.blocks)
            load = lambda name: [PoMState(  # noqa: E731
                tensors[f"{name}.{i}.total"].to(gen.device, gen.state_dtype),
                tensors[f"{name}.{i}.count"].to(gen.device, gen.state_dtype))
                for i in range(depth)]
            states = load("cond")
            frame_index = int(header["frame_index"])
            states_uncond = load("uncond") if params.cfg_at(frame_index) else None
            expected = gen.model.empty_states(1, gen.device, gen.state_dtype)
            for got, want in zip(states + (states_uncond or []), expected * 2, strict=False):
                if header["version"] == 1 and got.count.dim() == 3 and want.count.shape[1] == 1:
                    # version 1 kept the per-position count once per position; all equal
                    if not bool((got.count == got.count[:, :1]).all()):
                        raise SnapshotError("version-1 snapshot with unequal position counts")
                    got.count = got.count[:, :1].clone()
                if got.total.shape != want.total.shape or got.count.shape != want.count.shape:
                    raise SnapshotError("state tensor shapes do not match the model")
            cond = gen.encode_prompt(header["prompt"])
            rng_state = tensors["rng"]
        except (KeyError, TypeError) as exc:
            raise SnapshotError(f"snapshot is incomplete: {exc}") from exc
        self.params, self.seed, self.frame_index = params, int(header["seed"]), frame_index
        self.states, self.states_uncond = states, states_uncond
        self.prompt, self._cond = header["prompt"], cond
        self.rng.set_state(rng_state)


def _parse_snapshot(data: bytes) -> tuple[dict, dict[str, Tensor]]:
    header, payload = unpack(data, SNAPSHOT_MAGIC, "pomstream.session", READABLE_VERSIONS)
    try:
        tensors = st_load(payload)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt snapshot
        raise SnapshotError(f"corrupt snapshot: {exc}") from exc
    return header, tensors


class StreamGenerator:
    """Owns a model and steps any number of :class:`StreamSession` s, batched."""

    def __init__(self, model: VideoDiT, prompt_cache: int = 256, graphs: bool | None = None):
        self.model = model.eval().requires_grad_(False)
        # the network pass of a frame: CUDA graphs per batch bucket on a GPU, eager on CPU
        self.frame_step = FrameStep(self.model, graphs=graphs)
        self.cfg = model.cfg
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.autoencoder = build_autoencoder(model.cfg, self.device)
        # states accumulate over thousands of frames: keep them at least in float32
        self.state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self._digest: str | None = None
        self._prompts: OrderedDict[str, Tensor] = OrderedDict()
        self._prompt_cache = prompt_cache

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = weights_digest(self.model)
        return self._digest

    def session(self, prompt: str, seed: int = 0, **params) -> StreamSession | LayeredSession:
        p = GenerationParams(**params)
        if p.layers == "joint":
            return StreamSession(self, prompt, seed, p)
        if self.cfg.prompt_encoder != "digits":
            raise ValueError(f"layers={p.layers!r} needs a model that reads the digits "
                             f"grammar; {self.cfg.name!r} reads {self.cfg.prompt_encoder!r}")
        return LayeredSession(self, prompt, seed, p)

    def restore(self, data: bytes) -> StreamSession | LayeredSession:
        """A session continued from ``snapshot()`` bytes."""
        if is_layers_snapshot(data):
            session = LayeredSession(self, "", 0, GenerationParams(layers="digits"))
            session.restore(data)
            return session
        header, _ = _parse_snapshot(data)
        session = StreamSession(self, "", 0, GenerationParams(**header["params"]))
        session.restore(data)
        return session

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> Tensor:
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a string")
        if prompt in self._prompts:
            self._prompts.move_to_end(prompt)
            return self._prompts[prompt]
        vec = self.model.encode_prompts([prompt])  # (1, D) or (1, 1 + K, D)
        self._prompts[prompt] = vec
        if len(self._prompts) > self._prompt_cache:
            self._prompts.popitem(last=False)
        return vec

    @torch.no_grad()
    def step(self, sessions: list[StreamSession | LayeredSession]) -> list[np.ndarray]:
        """Advance each session by one frame; frames come back in the order given (a
        layered session's layers are stepped with the rest, its frame is their composite)."""
        flat, spans = _flatten(sessions)
        frames = self._step_plain(flat)
        out = []
        for s, (a, b) in zip(sessions, spans, strict=True):
            if isinstance(s, LayeredSession):
                s.frame_index += 1
                out.append(composite(frames[a:b]))
            else:
                out.append(frames[a])
        return out

    def _step_plain(self, sessions: list[StreamSession]) -> list[np.ndarray]:
        frames: list[np.ndarray | None] = [None] * len(sessions)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(sessions):
            if s.generator is not self:
                raise ValueError("session belongs to another generator")
            groups.setdefault(s.params.batch_key(s.frame_index), []).append(i)
        for idx in groups.values():
            for i, frame in zip(idx, self._step_group([sessions[i] for i in idx]), strict=True):
                frames[i] = frame
        return frames  # type: ignore[return-value]

    def _noise(self, sessions: list[StreamSession]) -> Tensor:
        shape = self.autoencoder.latent_shape
        x = torch.stack([torch.randn(shape, generator=s.rng) for s in sessions])
        return x.to(self.device, self.dtype)

    @torch.no_grad()
    def fold(self, sessions: list[StreamSession | LayeredSession], frames: np.ndarray) -> None:
        """Fold given frames into the sessions' pasts, as if each session had made them.

        ``frames`` is uint8 (n, H, W) gray or (n, H, W, 3), one frame per session; each
        is encoded and folded in at noise level ``context_noise`` (into every layer of a
        layered session). The sessions' random streams are not touched. Used to start
        from real or edited frames (e.g. the evaluation's blank-past test).
        """
        if len(frames) != len(sessions):
            raise ValueError("fold needs one frame per session")
        flat, spans = _flatten(sessions)
        frames = np.asarray(frames)
        per_layer = np.concatenate([frames[i : i + 1].repeat(b - a, axis=0)
                                    for i, (a, b) in enumerate(spans)])
        groups: dict[tuple, list[int]] = {}  # sessions (and layers) folded alike
        for i, s in enumerate(flat):
            groups.setdefault((s.params.context_noise, s.params.cfg_at(s.frame_index)),
                              []).append(i)
        for idx in groups.values():
            self._fold_plain([flat[i] for i in idx], per_layer[idx])
        for s in sessions:
            if isinstance(s, LayeredSession):
                s.frame_index += 1

    def _fold_plain(self, sessions: list[StreamSession], frames: np.ndarray) -> None:
        gray = np.asarray(frames)
        if gray.ndim == 4:
            gray = gray[..., :3].mean(-1).round().astype(np.uint8)
        x0 = self.autoencoder.encode(gray).to(self.device, self.dtype)  # (n, C, h, w)
        cond, states = self._group_inputs(sessions)
        self._fold_latents(sessions, x0, cond, states)

    def _group_inputs(self, sessions: list[StreamSession]) -> tuple[Tensor, list[PoMState]]:
        """Conditioning and states of a group; with guidance, conditional rows first and
        then unconditional ones (2n rows)."""
        n = len(sessions)
        cond = torch.cat([s._cond for s in sessions])  # (n, D) or (n, 1 + K, D)

        def stacked(attr: str) -> list[PoMState]:
            return [PoMState.cat(layer)
                    for layer in zip(*(getattr(s, attr) for s in sessions), strict=True)]

        states = stacked("states")
        if sessions[0].params.cfg_at(sessions[0].frame_index):
            empty = self.encode_prompt("")
            cond = torch.cat([cond, empty.expand(n, *empty.shape[1:])])  # 2n rows
            states = [PoMState.cat([a, b])
                      for a, b in zip(states, stacked("states_uncond"), strict=True)]
        return cond, states

    def _fold_latents(self, sessions: list[StreamSession], x0: Tensor, cond: Tensor,
                      states: list[PoMState]) -> None:
        """Fold finished frames x0 (n, C, h, w) into the sessions' states (at noise level
        context_noise) and advance their frame index."""
        p, n = sessions[0].params, len(sessions)
        ctx = x0
        if p.context_noise > 0:
            ctx = (1 - p.context_noise) * x0 + p.context_noise * self._noise(sessions)
        cfg = p.cfg_at(sessions[0].frame_index)  # the same for the group (batch_key)
        reps = 2 if cfg else 1
        t_ctx = torch.full((n * reps,), p.context_noise, device=self.device, dtype=self.dtype)
        _, new = self.frame_step(ctx.repeat(reps, 1, 1, 1), t_ctx, cond, states)
        per_session = list(zip(*(st.split() for st in new), strict=True))  # [reps*n][depth]
        for i, s in enumerate(sessions):
            s.frame_index += 1
            s.states = [st.to_dtype(self.state_dtype) for st in per_session[i]]
            # per session: sessions guided differently share frame 0's group
            s.states_uncond = ([st.to_dtype(self.state_dtype) for st in per_session[n + i]]
                               if cfg and s.params.cfg_at(s.frame_index) else None)
            s.last_latent = x0[i]

    def _step_group(self, sessions: list[StreamSession]) -> np.ndarray:
        p, step = sessions[0].params, self.frame_step
        cond, states = self._group_inputs(sessions)
        x = self._noise(sessions)  # (n, C, H, W)
        cfg = p.cfg_at(sessions[0].frame_index)  # the same for the group (batch_key)
        if cfg:
            scale = torch.tensor([s.params.guidance_at(s.frame_index) for s in sessions],
                                 device=self.device)

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            if not cfg:
                return step(x, t, cond, states)[0]
            v, _ = step(torch.cat([x, x]), torch.cat([t, t]), cond, states)
            v_cond, v_uncond = v.chunk(2)
            return guided(v_cond, v_uncond, scale)

        steps = p.steps_at(sessions[0].frame_index)  # the same for the group (batch_key)
        x0 = make_sampler(p.sampler, steps, self.cfg.timestep_shift).sample(velocity, x)
        self._fold_latents(sessions, x0, cond, states)
        return self.autoencoder.decode(x0)


def _flatten(sessions) -> tuple[list[StreamSession], list[tuple[int, int]]]:
    """The plain sessions behind ``sessions`` (a layered one's layers in order) and each
    session's [start, end) among them; each may appear once (its state moves on once)."""
    flat, spans = [], []
    for s in sessions:
        start = len(flat)
        flat.extend(s.layers if isinstance(s, LayeredSession) else [s])
        spans.append((start, len(flat)))
    if len({id(s) for s in flat}) != len(flat):
        raise ValueError("a session (or a layer) appears twice in one call")
    return flat, spans
