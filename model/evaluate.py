"""Objective scores for generated Moving-digits videos.

A generated video is judged against the prompt it was made from ("digits 3 and 7") by a
small CNN, :class:`DigitClassifier`, that looks at one whole 64x64 frame and says which of
the ten digits are on it (multi-label presence, not count: "3 and 3" is the set {3}). It
is trained on frames rendered from the *train* split of :mod:`model.data` and measured on
the held-out *test* split, whose digit images neither it nor the generator has seen. Its
weights ship in ``model/weights/digit-classifier.safetensors`` (``python -m
model.evaluate train`` rebuilds them in a few CPU minutes).

Metrics of :func:`score_video` (frames are uint8 (F, H, W) or RGB (F, H, W, 3); RGB is
averaged to gray; values are on the 0-255 scale where an intensity is involved):

``prompt_accuracy``
    fraction of frames whose predicted digit set (probability > 0.5) is exactly the
    prompt's set; 1 is perfect.
``digit_recall``
    mean over frames of the fraction of the prompt's distinct digits predicted present;
    unlike ``prompt_accuracy`` it ignores extra, hallucinated digits.
``identity_stability``
    fraction of consecutive frame pairs whose predicted sets are equal; digits that
    morph into others, appear or vanish lower it (even when the prompt is wrong).
``motion``
    mean absolute difference between consecutive frames, 0-255; a frozen video scores 0.
``smoothness``
    mean magnitude, in pixels/frame^2, of the second difference (acceleration) of the
    ink-weighted centroid trajectory, the centroid of ``max(gray - 64, 0)``; frames with
    almost no ink are skipped. Lower is smoother; real clips are not at 0 because of
    bounces, occlusions and positions rounded to whole pixels, so compare with
    :func:`reference_scores`.
``contrast``
    mean over frames of (99th - 1st percentile) of the intensity, 0-255; washed-out or
    grey frames score low.
``blank_fraction``
    fraction of frames with fewer than 16 ink pixels (intensity > 64); the smallest
    real digit has about 28.

A metric that a video is too short to define (pairs or triples of frames) is NaN;
averages over videos ignore NaNs.

:func:`reference_scores` gives the same metrics on real test clips, the target a
generator should come close to; :func:`evaluate_generator` streams many videos at once
from a :class:`~model.streaming.StreamGenerator` and scores windows of frames early and
late in the stream (does quality hold at frame 1,000?); :func:`evaluate_file` scores an MP4.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import MovingDigits, parse_prompt, prompt_for

SIZE = 64  # the classifier's input side; other sizes are resized to it
INK = 64  # intensity above which a pixel counts as drawn
BLANK_PIXELS = 16  # fewer ink pixels than this: a blank frame
DEFAULT_PATH = Path(__file__).parent / "weights" / "digit-classifier.safetensors"
METRICS = ("prompt_accuracy", "digit_recall", "identity_stability", "motion", "smoothness",
           "contrast", "blank_fraction")


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
                                "train one with `python -m model.evaluate train`")
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


# -- metrics -----------------------------------------------------------------------------------

def _nan_mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _centroids(gray: np.ndarray) -> np.ndarray:
    """Ink-weighted centroid (y, x) per frame; NaN where the frame is (almost) blank."""
    ink = np.maximum(gray - INK, 0)
    mass = ink.sum(axis=(1, 2))
    ys, xs = np.arange(gray.shape[1]), np.arange(gray.shape[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (ink.sum(axis=2) * ys).sum(axis=1) / mass
        cx = (ink.sum(axis=1) * xs).sum(axis=1) / mass
    c = np.stack([cy, cx], axis=1)
    c[(gray > INK).sum(axis=(1, 2)) < BLANK_PIXELS] = np.nan
    return c


def _smoothness(gray: np.ndarray) -> float:
    c = _centroids(gray)
    accel = np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=1)  # NaN if a frame is blank
    return _nan_mean(accel[~np.isnan(accel)])


def score_video(frames, digits: Sequence[int] | str,
                classifier: DigitClassifier | None = None) -> dict[str, float]:
    """The metrics of the module docstring for one video and the digits it should show.

    ``digits`` may also be the prompt text ("digits 3 and 7").
    """
    if isinstance(digits, str):
        digits = parse_prompt(digits)
    wanted = sorted({int(d) for d in digits})
    if not wanted or not all(0 <= d <= 9 for d in wanted):
        raise ValueError(f"digits must name at least one digit 0-9, got {digits!r}")
    gray = _gray(frames)
    present = predict_digits(gray, classifier) > 0.5  # (F, 10)
    target = np.zeros(10, dtype=bool)
    target[wanted] = True
    return {
        "prompt_accuracy": _nan_mean((present == target).all(axis=1)),
        "digit_recall": _nan_mean(present[:, wanted].mean(axis=1)),
        "identity_stability": _nan_mean((present[1:] == present[:-1]).all(axis=1)),
        "motion": _nan_mean(np.abs(np.diff(gray, axis=0))),
        "smoothness": _smoothness(gray),
        "contrast": _nan_mean(np.percentile(gray, 99, axis=(1, 2))
                              - np.percentile(gray, 1, axis=(1, 2))),
        "blank_fraction": _nan_mean((gray > INK).sum(axis=(1, 2)) < BLANK_PIXELS),
    }


def average_scores(scores: Iterable[dict[str, float]]) -> dict[str, float]:
    """Metric-wise mean over videos, ignoring NaN (undefined) values."""
    scores = list(scores)
    out = {}
    for name in METRICS:
        vals = np.array([s[name] for s in scores], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[name] = float(vals.mean()) if vals.size else math.nan
    return out


def reference_scores(frames: int = 20, videos: int = 100, seed: int = 0,
                     classifier: DigitClassifier | None = None) -> dict[str, float]:
    """The metrics averaged over real clips of the test split: what a perfect generator gets."""
    data, rng = MovingDigits("test"), np.random.default_rng(seed)
    clips = [data.sample(rng, frames) for _ in range(videos)]
    return average_scores(score_video(c.frames, c.digits, classifier) for c in clips)


# -- generators and files ------------------------------------------------------------------------

def _prompts(prompts_or_n: int | Sequence[str], seed: int) -> list[tuple[str, list[int]]]:
    """(prompt, digits) pairs: given prompts, or n random 1-3 digit sets as in training."""
    if isinstance(prompts_or_n, int):
        rng = np.random.default_rng(seed)
        sets = [[int(d) for d in rng.integers(0, 10, size=rng.integers(1, 4))]
                for _ in range(prompts_or_n)]
        return [(prompt_for(s), s) for s in sets]
    pairs = [(p, parse_prompt(p)) for p in prompts_or_n]
    for p, digits in pairs:
        if not digits:
            raise ValueError(f"prompt {p!r} names no digit")
    return pairs


def evaluate_generator(generator, prompts_or_n: int | Sequence[str], frames: int = 1000,
                       windows: Sequence[tuple[int, int]] = ((0, 20), (980, 1000)),
                       seed: int = 0, progress: bool = True,
                       classifier: DigitClassifier | None = None, by_digits_report: bool = False,
                       **gen_params) -> dict:
    """Stream videos from ``generator`` and score windows of frames [start, end).

    ``prompts_or_n`` is a list of prompts or a number of random digit sets; video i gets
    seed ``seed + i``. All sessions advance together through ``generator.step`` (one
    batched call per frame); only the frames inside a window are kept. ``gen_params``
    (steps, sampler, guidance, ...) go to ``generator.session``. With
    ``by_digits_report``, ``prompt_accuracy_by_digits`` gives each window's prompt accuracy
    by the number of distinct digits asked for ("1", "2", "3").
    """
    windows = [(int(a), int(b)) for a, b in windows]
    for a, b in windows:
        if not 0 <= a < b <= frames:
            raise ValueError(f"window ({a}, {b}) is not inside 0..{frames}")
    pairs = _prompts(prompts_or_n, seed)
    if not pairs:
        raise ValueError("nothing to evaluate: no prompts")
    sessions = [generator.session(p, seed=seed + i, **gen_params)
                for i, (p, _) in enumerate(pairs)]
    kept = {w: [[] for _ in sessions] for w in windows}
    last = max(b for _, b in windows)  # frames after the last window would be thrown away
    from tqdm.auto import tqdm

    for f in tqdm(range(last), desc="evaluate", unit="frame", disable=not progress):
        out = generator.step(sessions)
        for (a, b), videos in kept.items():
            if a <= f < b:
                for video, frame in zip(videos, out, strict=True):
                    video.append(np.array(frame))  # a copy: the batch may be reused
    result: dict = {}
    by_digits: dict = {}  # prompt accuracy by how many digits the prompt asks for
    counts = [len(set(digits)) for _, digits in pairs]
    for (a, b), videos in kept.items():
        scores = [score_video(np.stack(v), digits, classifier)
                  for v, (_, digits) in zip(videos, pairs, strict=True)]
        result[f"window_{a}_{b}"] = average_scores(scores)
        by_digits[f"window_{a}_{b}"] = {
            str(n): average_scores(s for s, c in zip(scores, counts, strict=True) if c == n
                                   )["prompt_accuracy"]
            for n in sorted(set(counts))}
    if by_digits_report:
        result["prompt_accuracy_by_digits"] = by_digits
    result.update(videos=len(sessions), frames=last)
    return result


def evaluate_file(path: str | Path, prompt: str | Sequence[int],
                  classifier: DigitClassifier | None = None) -> dict[str, float]:
    """Score a video file (e.g. an MP4 the server wrote) against its prompt."""
    from server.encoding import read_frames

    return score_video(read_frames(path), prompt, classifier)


# -- command line --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    """``python -m model.evaluate train|accuracy|reference|file PATH PROMPT``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split(
        "\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the digit classifier and save it")
    tr.add_argument("--steps", type=int, default=4000)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--lr", type=float, default=1e-2)
    tr.add_argument("--resume", help="continue training the classifier saved there")
    tr.add_argument("--out", default=str(DEFAULT_PATH))
    sub.add_parser("accuracy", help="the bundled classifier's accuracy on test frames")
    sub.add_parser("reference", help="metrics on real test clips")
    fi = sub.add_parser("file", help="score a video file")
    fi.add_argument("path")
    fi.add_argument("prompt")
    args = ap.parse_args(argv)
    if args.cmd == "train":
        start = time.perf_counter()
        init, meta = None, {}
        if args.resume:
            init, meta = load_classifier(args.resume), _metadata(args.resume)
        model = train_classifier(args.steps, args.seed, args.threads, lr=args.lr,
                                 log_every=250, init=init)
        seconds = time.perf_counter() - start
        acc = classifier_accuracy(model)
        stages = json.loads(meta.get("stages", "[]")) + [
            {"steps": args.steps, "lr": args.lr, "seed": args.seed, "seconds": round(seconds)}]
        meta = {"stages": json.dumps(stages), "test_accuracy": json.dumps(acc)}
        print(f"trained in {seconds:.0f}s -> {save_classifier(model, args.out, meta)}")
        print(json.dumps(acc))
    elif args.cmd == "accuracy":
        print(json.dumps(classifier_accuracy()))
    elif args.cmd == "reference":
        print(json.dumps(reference_scores(), indent=1))
    else:
        print(json.dumps(evaluate_file(args.path, args.prompt), indent=1))


if __name__ == "__main__":
    main()
