"""The digit classifier: the judge of every objective score of a Moving-digits video.

A small CNN, :class:`DigitClassifier`, looks at one whole 64x64 frame and says which of
the ten digits are on it (multi-label presence, not count: "3 and 3" is the set {3}). It
is trained on frames rendered from the *train* split of :mod:`pomstream.model.data` and
measured on the held-out *test* split, whose digit images neither it nor the generator
has seen. Its weights ship in ``model/weights/digit-classifier.safetensors``
(``python -m pomstream.model.evaluate train`` rebuilds them in a few CPU minutes).
"""

from __future__ import annotations

import copy
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import MovingDigits

SIZE = 64  # the classifier's input side; other sizes are resized to it
DEFAULT_PATH = Path(__file__).parent / "weights" / "digit-classifier.safetensors"


# -- the classifier ---------------------------------------------------------------------------

class DigitClassifier(nn.Module):
    """Which digits are on a frame: (B, 1, 64, 64) in [0, 1] -> (B, 10) presence logits.

    Strided convolutions bring the frame to an 8x8 grid of features whose receptive
    field (53 px) covers a whole 28 px digit and its neighbourhood; a global max over the
    grid then asks "is this digit anywhere?", whatever the position and number of digits.
    Batch norm makes the short CPU training converge about twice as fast.
    """

    def __init__(self, width: int = 16):
        super().__init__()

        def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            *conv(1, w, 5, stride=2),  # 32x32
            *conv(w, 2 * w, stride=2),  # 16x16
            *conv(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 8x8
            *conv(4 * w, 6 * w),
            *conv(6 * w, 6 * w),
        )
        self.head = nn.Linear(6 * w, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def _training_batch(data: MovingDigits, rng: np.random.Generator, batch: int,
                    empty: float = 0.05) -> tuple[Tensor, Tensor]:
    """Single random frames of random clips with their presence labels.

    A few frames are empty so that the classifier learns to say "nothing" on a blank
    frame instead of guessing a digit.
    """
    x = np.zeros((batch, SIZE, SIZE), dtype=np.uint8)
    y = np.zeros((batch, 10), dtype=np.float32)
    for i in range(batch):
        if rng.random() < empty:
            continue
        clip = data.sample(rng, frames=1)
        x[i] = clip.frames[0]
        y[i, clip.digits] = 1.0
    return torch.from_numpy(x).float().div_(255).unsqueeze(1), torch.from_numpy(y)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mild degradations a decoder produces (dimmer ink, blur, noise).

    They keep the classifier from failing on a slightly soft but clearly readable
    generated frame; they are mild so it still rejects frames that are not digits.
    """
    b = x.shape[0]
    gain = torch.empty(b, 1, 1, 1).uniform_(0.6, 1.0, generator=gen)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    blurred = F.conv2d(x, kernel, padding=1)
    use_blur = torch.rand(b, 1, 1, 1, generator=gen) < 0.3
    x = torch.where(use_blur, blurred, x) * gain
    sigma = torch.empty(b, 1, 1, 1).uniform_(0.0, 0.05, generator=gen)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp_(0, 1)


def train_classifier(steps: int = 4000, seed: int = 0, threads: int | None = 1,
                     batch: int = 64, lr: float = 1e-2, log_every: int = 0,
                     init: DigitClassifier | None = None) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on frames rendered from the train split.

    ``threads`` caps torch's CPU threads while training (restored afterwards); ``init``
    continues training a copy of that model instead of a fresh one, so a long training
    can be run as several short ones.
    """
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        data = MovingDigits("train")
        model = copy.deepcopy(init).requires_grad_(True) if init else DigitClassifier()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                    pct_start=0.1)
        model.train()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            x, y = _training_batch(data, rng, batch)
            loss = F.binary_cross_entropy_with_logits(model(_augment(x, gen)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log_every and step % log_every == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} "
                      f"{time.perf_counter() - start:.0f}s", flush=True)
        return model.eval()
    finally:
        torch.set_num_threads(old_threads)


def save_classifier(model: DigitClassifier, path: str | Path = DEFAULT_PATH,
                    metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # float16 halves the file; the scores do not change (loading casts back to float32)
    tensors = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


@lru_cache(maxsize=4)
def _load_cached(path: str) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)


def _metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def load_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The classifier saved at ``path`` (the bundled one by default), loaded once."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.exists():
        raise FileNotFoundError(f"no digit classifier at {path}; "
                                "train one with `python -m pomstream.model.evaluate train`")
    return _load_cached(str(path.resolve()))


# -- frames -> predictions ----------------------------------------------------------------------

def _gray(frames) -> np.ndarray:
    """float32 (F, H, W) on the 0-255 scale from uint8 (F, H, W) or (F, H, W, 3)."""
    x = np.asarray(frames)
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x[..., :3].mean(axis=-1) if x.shape[-1] >= 3 else x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"frames must be (F, H, W) or (F, H, W, 3), got shape {x.shape}")
    return x.astype(np.float32)


@torch.inference_mode()
def predict_digits(frames, classifier: DigitClassifier | None = None,
                   chunk: int = 256) -> np.ndarray:
    """Presence probabilities (F, 10) of each digit on each frame."""
    classifier = classifier or load_classifier()
    gray = torch.from_numpy(_gray(frames)).div_(255).unsqueeze(1)
    if gray.shape[-2:] != (SIZE, SIZE):  # the classifier was trained on 64x64 canvases
        gray = F.interpolate(gray, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    probs = [torch.sigmoid(classifier(part)) for part in gray.split(chunk)]
    return torch.cat(probs).numpy() if probs else np.zeros((0, 10), np.float32)


def classifier_accuracy(classifier: DigitClassifier | None = None, frames: int = 2000,
                        seed: int = 1, split: str = "test") -> dict:
    """Accuracy on single frames of random clips (1-3 digits) of ``split``.

    ``exact_set``: predicted set == true set; ``per_digit``: mean over the ten digits of
    the accuracy of the present/absent decision; ``per_digit_each``: that, digit by digit.
    """
    data, rng = MovingDigits(split), np.random.default_rng(seed)
    clips = [data.sample(rng, frames=1) for _ in range(frames)]
    truth = np.zeros((frames, 10), dtype=bool)
    for i, clip in enumerate(clips):
        truth[i, clip.digits] = True
    pred = predict_digits(np.stack([c.frames[0] for c in clips]), classifier) > 0.5
    correct = pred == truth
    return {"exact_set": float(correct.all(axis=1).mean()),
            "per_digit": float(correct.mean()),
            "per_digit_each": [round(float(v), 4) for v in correct.mean(axis=0)]}
