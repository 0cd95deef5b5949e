"""Objective scores of a Moving-digits video against the digits it should show.

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
generator should come close to; :mod:`.evaluate` applies them to generated streams.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .classifier import DigitClassifier, _gray, predict_digits
from .data import MovingDigits, parse_prompt

INK = 64  # intensity above which a pixel counts as drawn
BLANK_PIXELS = 16  # fewer ink pixels than this: a blank frame
METRICS = ("prompt_accuracy", "digit_recall", "identity_stability", "motion", "smoothness",
           "contrast", "blank_fraction")


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
