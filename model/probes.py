"""Quick probes of a model's behaviour, run at every checkpoint (seconds to minutes on a CPU).

Where :func:`~pomstream.model.evaluate.evaluate_generator` scores whole streams, the probes ask one
question each, with the project's digit classifier as the judge:

``first_frame``
    does frame 0, which has only the prompt to go on, draw the digit asked for? Ten
    single-digit prompts x ``seeds`` seeds: ``exact`` (the predicted set is the prompt's),
    ``top_guess`` (the prompt's digit is the classifier's most likely one), ``no_digit``
    (no digit predicted at all), ``ink_px`` (pixels brighter than 64; a real digit has
    about 120), and the mean absolute pixel change (0-255) between frames of the same
    seed and different prompts (``change_across_prompts``) against the same prompt and
    different seeds (``change_across_seeds``), and the same two numbers for real frames
    (``real_change_across_prompts`` / ``_seeds``: one place per seed, a test-split image
    of each digit there). A model that ignores its prompt has a tiny ratio; real frames,
    whose position comes with the seed, have about 0.7, not 1.
``two_digits``
    the same for frame 0 of random two-digit prompts (``pairs`` of them, two seeds
    each): ``exact`` and ``recall``, and how the rest fail: ``one_of_two`` (one asked
    digit and nothing else: one drawn twice, or the two on top of each other),
    ``one_right_one_wrong``, ``none_right``.
``recovery``
    the blank trap: fold ``past`` blank or dimmed (x0.3) real frames into a session, then
    run ``frames`` frames with the prompt; ``recovered`` is the fraction of sessions whose
    last frame has ink again, ``recovered_digits`` whose last frame shows a prompted digit.

:func:`run_probes` runs them all (and, with ``stream_frames``, streams whose blank
fraction late in the stream is reported); ``pomstream probe`` is the command line.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import numpy as np

from .classifier import load_classifier, predict_digits
from .data import MovingDigits, prompt_for
from .evaluate import evaluate_generator
from .metrics import BLANK_PIXELS, INK


def frame0(generator, prompts: Sequence[str], seeds: Sequence[int], **params) -> np.ndarray:
    """uint8 gray (len(prompts), len(seeds), H, W): frame 0 of each (prompt, seed)."""
    sessions = [generator.session(p, seed=s, **params) for p in prompts for s in seeds]
    frames = np.stack(generator.step(sessions))[..., 0]
    return frames.reshape(len(prompts), len(seeds), *frames.shape[1:])


def pair_prompts(n: int, seed: int = 0) -> list[list[int]]:
    """The two-digit test's pairs: n sets of two different digits, smaller first."""
    rng = np.random.default_rng(seed)
    return [sorted(int(d) for d in rng.choice(10, size=2, replace=False)) for _ in range(n)]


def _sets(probs: np.ndarray) -> np.ndarray:
    return probs > 0.5


def _change(gray: np.ndarray) -> tuple[float, float]:
    """Mean absolute change of (prompt, seed, H, W) frames across prompts, across seeds."""
    prompts, seeds = gray.shape[:2]
    across_prompts = np.mean([np.abs(gray[a] - gray[b]).mean()
                              for a, b in itertools.combinations(range(prompts), 2)])
    across_seeds = np.mean([np.abs(gray[:, a] - gray[:, b]).mean()
                            for a, b in itertools.combinations(range(seeds), 2)])
    return float(across_prompts), float(across_seeds)


def _real_frames(seeds: int, size: int) -> np.ndarray:
    """(10, seeds, size, size) float: for seed s one place, and an image of each digit
    there (test split), as frame 0 of "digit 0".."digit 9" would be with one seed."""
    data = MovingDigits("test", size=size)
    out = []
    for d in range(10):
        images = data.images[data.labels == d]
        out.append([data.render(np.random.default_rng(1000 + s),
                                [images[np.random.default_rng(s).integers(len(images))]], 1)[0]
                    for s in range(seeds)])
    return np.asarray(out, dtype=np.float32)


def first_frame(generator, seeds: int = 8, classifier=None, **params) -> dict:
    classifier = classifier or load_classifier()
    digits = list(range(10))
    frames = frame0(generator, [prompt_for([d]) for d in digits], range(seeds), **params)
    probs = predict_digits(frames.reshape(-1, *frames.shape[2:]), classifier)
    probs = probs.reshape(10, seeds, 10)
    target = np.eye(10, dtype=bool)[:, None, :]  # (prompt, 1, digit)
    present = _sets(probs)
    gray = frames.astype(np.float32)
    across_prompts, across_seeds = _change(gray)
    real_prompts, real_seeds = _change(_real_frames(seeds, gray.shape[-1]))
    return {
        "exact": float((present == target).all(-1).mean()),
        "top_guess": float((probs.argmax(-1) == np.arange(10)[:, None]).mean()),
        "no_digit": float((~present.any(-1)).mean()),
        "ink_px": float((gray > INK).sum((-2, -1)).mean()),
        "change_across_prompts": float(across_prompts),
        "change_across_seeds": float(across_seeds),
        "real_change_across_prompts": real_prompts,
        "real_change_across_seeds": real_seeds,
        "by_digit_exact": [round(float(v), 3) for v in (present == target).all(-1).mean(1)],
    }


def two_digits(generator, prompts: int = 16, seeds: int = 2, classifier=None, seed: int = 0,
               **params) -> dict:
    classifier = classifier or load_classifier()
    pairs = pair_prompts(prompts, seed)
    frames = frame0(generator, [prompt_for(p) for p in pairs], range(seeds), **params)
    present = _sets(predict_digits(frames.reshape(-1, *frames.shape[2:]), classifier))
    present = present.reshape(prompts, seeds, 10)
    target = np.zeros((prompts, 1, 10), dtype=bool)
    for i, p in enumerate(pairs):
        target[i, 0, p] = True
    hits = (present & target).sum(-1)  # right digits seen: 0, 1 or 2
    extra = (present & ~target).sum(-1)  # digits seen that were not asked for
    return {"exact": float((present == target).all(-1).mean()),
            "recall": float(hits.mean() / 2),
            # how the others fail: one asked digit and nothing else (one drawn twice, or
            # the two on top of each other), one right and one wrong, none right
            "one_of_two": float(((hits == 1) & (extra == 0)).mean()),
            "one_right_one_wrong": float(((hits == 1) & (extra > 0)).mean()),
            "none_right": float((hits == 0).mean())}


def recovery(generator, sessions: int = 16, past: int = 3, frames: int = 12,
             dim: float = 0.0, classifier=None, seed: int = 0, **params) -> dict:
    """Fold ``past`` frames (a real clip's, times ``dim``: 0 = blank) into each session,
    then generate ``frames`` frames with the clip's prompt."""
    classifier = classifier or load_classifier()
    data = MovingDigits("test", size=generator.cfg.frame_size,
                        order=generator.cfg.prompt_order)
    rng = np.random.default_rng(seed)
    clips = [data.sample(rng, past) for _ in range(sessions)]
    group = [generator.session(c.prompt, seed=seed + i, **params) for i, c in enumerate(clips)]
    for f in range(past):
        past_frames = np.stack([np.rint(c.frames[f] * dim).astype(np.uint8) for c in clips])
        generator.fold(group, past_frames)
    last = None
    for _ in range(frames):
        last = np.stack(generator.step(group))[..., 0]
    ink = (last > INK).sum((-2, -1)) >= BLANK_PIXELS
    present = _sets(predict_digits(last, classifier))
    shows = [present[i, c.digits].any() for i, c in enumerate(clips)]
    return {"recovered": float(ink.mean()), "recovered_digits": float(np.mean(shows)),
            "past": past, "dim": dim, "frames": frames}


def run_probes(generator, seeds: int = 8, stream_videos: int = 0, stream_frames: int = 300,
               classifier=None, pairs: int = 16, **params) -> dict:
    """Every probe; with ``stream_videos``, also that many streams of ``stream_frames``
    frames scored at the start and the end (blank fraction, prompt accuracy, ...)."""
    classifier = classifier or load_classifier()
    out: dict = {}
    timings = {}
    for name, fn in (("first_frame", lambda: first_frame(generator, seeds, classifier,
                                                          **params)),
                     ("two_digits", lambda: two_digits(generator, pairs,
                                                       classifier=classifier, **params)),
                     ("recovery_blank", lambda: recovery(generator, classifier=classifier,
                                                         **params)),
                     ("recovery_dimmed", lambda: recovery(generator, dim=0.3,
                                                          classifier=classifier, **params))):
        start = time.perf_counter()
        out[name] = fn()
        timings[name] = round(time.perf_counter() - start, 1)
    if stream_videos:
        start = time.perf_counter()
        last = stream_frames
        out["streams"] = evaluate_generator(
            generator, stream_videos, frames=last,
            windows=((0, min(20, last)), (max(0, last - 20), last)), progress=False,
            classifier=classifier, by_digits_report=True, **params)
        timings["streams"] = round(time.perf_counter() - start, 1)
    out["seconds"] = timings
    return out
