"""Per-digit layers: a multi-digit prompt streamed as one single-digit stream per digit.

A Moving-digits clip is made of digits that each move on their own, laid over each other
by the pixel-wise maximum (:meth:`~pomstream.model.data.MovingDigits.render`). With
``GenerationParams.layers == "digits"`` a session samples a prompt the same way: "digits 3
and 7" becomes two sessions of the network, "digit 3" and "digit 7", each with its own
PoM state and noise, and every frame shown is the maximum of their frames. The network
draws one digit per stream far more reliably than it binds two in one (the demo model:
single digits at frame 0 0.99 exact, pairs 0.38; ``docs/demo-training.md``), and the
layers never have to tell their digits apart. The cost of a frame grows with the digits
named: one network stream per layer, all batched in the same calls.

A :class:`LayeredSession` has the interface of a
:class:`~pomstream.model.streaming.StreamSession` (``next_frame``, ``set_prompt``,
``snapshot``, ``fork``, ``frame_index``, ``prompt``), so the server runs it as any session:

- the first layer has the session's seed, so a prompt naming one digit (or none) makes
  exactly the frames a joint session makes; the j-th layer created draws from
  ``layer_seed(seed, j)`` (the seed must be >= 0);
- a prompt change keeps the layers of the digits still named (with their states; layers
  are matched by digit, not by wording) and starts a new layer for each digit newly
  named: its frame 0 is drawn from its prompt alone, so the digit appears in the stream;
  the empty prompt lets every layer go on unprompted (each keeps its digit, to be named
  again), and a layer begun unprompted takes the first digit named later;
- :meth:`~pomstream.model.streaming.StreamGenerator.fold` folds a given frame into every
  layer (the blank-past test folds blank frames);
- a snapshot holds every layer's own snapshot; restored into the same model, the session
  continues bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from .prompts import parse_digit_prompt
from .snapshots import SnapshotError, is_kind, pack, unpack

# The generator (model/streaming.py) makes layered sessions and steps their layers; this
# module does not import it (no cycle): a layer is made by ``generator.session``.

LAYERS_MAGIC = b"POMLAYR\x00"
LAYERS_VERSION = 1


def layer_seed(seed: int, j: int) -> int:
    """Seed of the j-th layer a session creates (layer 0: the session's own seed)."""
    if j == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, j]).generate_state(1, np.uint64)[0] >> 1)


class LayeredSession:
    """One video drawn as layers; create it with ``StreamGenerator.session(...,
    layers="digits")``."""

    def __init__(self, generator, prompt: str, seed: int, params):
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"a layered session's seed is an integer >= 0, got {seed!r}")
        self.generator = generator
        self.params = params
        self.seed = seed
        self.frame_index = 0
        self.layers: list = []  # a plain StreamSession per layer
        self.digits: list[int | None] = []  # each layer's digit (None: begun unprompted)
        self.created = 0  # layers created so far: the next one's index for its seed
        self.prompt = ""
        self.set_prompt(prompt)

    @property
    def layer_params(self):
        return replace(self.params, layers="joint")

    def _new_layer(self, prompt: str):
        layer = self.generator.session(prompt, layer_seed(self.seed, self.created),
                                       **asdict(self.layer_params))
        self.created += 1
        return layer

    def set_prompt(self, prompt: str) -> None:
        """Change what the next frames show: layers of digits still named go on, newly
        named digits get a new layer (or an unprompted one), layers of digits no longer
        named end; the empty prompt lets every layer go on unprompted. Layers are matched
        by digit, so "3", "digit 3" and "Digit 3" are the same layer."""
        self.generator.encode_prompt(prompt)  # refuses what the model cannot read
        wanted = parse_digit_prompt(prompt)
        if not wanted:
            if not self.layers:
                self.layers, self.digits = [self._new_layer("")], [None]
            for layer in self.layers:
                layer.set_prompt("")
            self.prompt = prompt
            return
        free = list(range(len(self.layers)))
        picks: list[int | None] = []
        for d in wanted:  # a layer that drew this digit, else one begun unprompted
            j = next((j for j in free if self.digits[j] == d), None)
            if j is not None:
                free.remove(j)
            picks.append(j)
        for k in range(len(wanted)):
            if picks[k] is None:
                picks[k] = next((j for j in free if self.digits[j] is None), None)
                if picks[k] is not None:
                    free.remove(picks[k])
        layers, digits = [], []
        for d, j in zip(wanted, picks, strict=True):
            layer = self._new_layer(f"digit {d}") if j is None else self.layers[j]
            layer.set_prompt(f"digit {d}")
            layers.append(layer)
            digits.append(d)
        self.layers, self.digits, self.prompt = layers, digits, prompt

    def next_frame(self) -> np.ndarray:
        """The next frame, uint8 RGB (H, W, 3)."""
        return self.generator.step([self])[0]

    def fork(self, seed: int | None = None) -> LayeredSession:
        """An independent copy; with ``seed`` the j-th layer (in the current order) draws
        from ``layer_seed(seed, j)``, and later layers from the indexes after those."""
        other = self.generator.restore(self.snapshot())
        if seed is not None:
            if not isinstance(seed, int) or seed < 0:
                raise ValueError(f"a layered session's seed is an integer >= 0, got {seed!r}")
            other.seed, other.created = seed, len(other.layers)
            for j, layer in enumerate(other.layers):
                layer.seed = layer_seed(seed, j)
                layer.rng.manual_seed(layer.seed)
        return other

    @property
    def state_bytes(self) -> int:
        """Bytes of carried state: every layer's."""
        return sum(layer.state_bytes for layer in self.layers)

    def snapshot(self) -> bytes:
        parts = [layer.snapshot() for layer in self.layers]
        header = {
            "format": "pomstream.layers",
            "version": LAYERS_VERSION,
            "config": self.generator.model.cfg.fingerprint(),
            "model": self.generator.model.cfg.name,
            "frame_index": self.frame_index,
            "prompt": self.prompt,
            "seed": self.seed,
            "created": self.created,
            "digits": self.digits,
            "params": asdict(self.params),
            "layers": [len(p) for p in parts],
        }
        return pack(LAYERS_MAGIC, header, b"".join(parts))

    def restore(self, data: bytes) -> None:
        """Replace this session's whole state with a snapshot of the same model."""
        header, parts = parse_layers_snapshot(data)
        gen = self.generator
        try:
            if header["config"] != gen.model.cfg.fingerprint():
                raise SnapshotError(f"snapshot is of model {header['model']!r} with another "
                                    f"architecture than the loaded {gen.model.cfg.name!r}")
            params = type(self.params)(**header["params"])
            frame_index, seed, created = (header["frame_index"], header["seed"],
                                          header["created"])
            prompt, digits = header["prompt"], [None if d is None else int(d)
                                                for d in header["digits"]]
            if not (all(isinstance(v, int) and v >= 0 for v in (frame_index, seed, created))
                    and isinstance(prompt, str) and len(digits) == len(parts) <= created):
                raise SnapshotError("layered snapshot with impossible values")
            gen.encode_prompt(prompt)
            named = parse_digit_prompt(prompt)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"snapshot is incomplete: {exc}") from exc
        if params.layers != "digits" or (named and digits != named):
            raise SnapshotError("layered snapshot whose layers disagree with its prompt")
        if any(is_layers_snapshot(p) for p in parts):
            raise SnapshotError("layered snapshot with a layered snapshot inside")
        layers = [gen.restore(p) for p in parts]
        if any(layer.params != replace(params, layers="joint")
               or layer.frame_index > frame_index for layer in layers):
            raise SnapshotError("layered snapshot whose layers disagree with its settings")
        self.params, self.seed, self.frame_index = params, seed, frame_index
        self.layers, self.digits, self.created, self.prompt = layers, digits, created, prompt


def parse_layers_snapshot(data: bytes) -> tuple[dict, list[bytes]]:
    """(header, each layer's snapshot bytes) of a :meth:`LayeredSession.snapshot`."""
    header, payload = unpack(data, LAYERS_MAGIC, "pomstream.layers", (LAYERS_VERSION,))
    try:
        sizes = [int(k) for k in header["layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot: {exc}") from exc
    offset, parts = 0, []
    for size in sizes:
        parts.append(payload[offset : offset + size])
        offset += size
    if offset != len(payload) or not parts:
        raise SnapshotError("corrupt snapshot: its layers do not add up to its length")
    return header, parts


def is_layers_snapshot(data) -> bool:
    return is_kind(data, LAYERS_MAGIC)


def composite(frames: list[np.ndarray]) -> np.ndarray:
    """The layers' frames laid over each other: their pixel-wise maximum."""
    out = frames[0].copy()
    for frame in frames[1:]:
        np.maximum(out, frame, out=out)
    return out
