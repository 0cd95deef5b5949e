"""Evaluation harness: stream a generator's videos or read a file, and score them.

:func:`evaluate_generator` streams many videos at once from a
:class:`~pomstream.model.streaming.StreamGenerator` and scores windows of frames early and
late in the stream (does quality hold at frame 1,000?); :func:`evaluate_file` scores an
MP4. The scores are :mod:`pomstream.model.metrics`, judged by
:mod:`pomstream.model.classifier`; the quick per-checkpoint questions are
:mod:`pomstream.model.probes`. ``python -m pomstream.model.evaluate`` trains and checks the
classifier.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .classifier import (
    DEFAULT_PATH,
    DigitClassifier,
    _metadata,
    classifier_accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .data import parse_prompt, prompt_for
from .metrics import average_scores, reference_scores, score_video

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
    by the number of distinct digits asked for ("1", "2", "3"), and ``per_video`` each
    video's prompt, seed and its windows' accuracy, recall and identity stability.
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
    per_video = [{"prompt": p, "seed": seed + i} for i, (p, _) in enumerate(pairs)]
    counts = [len(set(digits)) for _, digits in pairs]
    for (a, b), videos in kept.items():
        scores = [score_video(np.stack(v), digits, classifier)
                  for v, (_, digits) in zip(videos, pairs, strict=True)]
        result[f"window_{a}_{b}"] = average_scores(scores)
        for row, sc in zip(per_video, scores, strict=True):
            row[f"window_{a}_{b}"] = {k: round(sc[k], 4) for k in
                                      ("prompt_accuracy", "digit_recall", "identity_stability")}
        by_digits[f"window_{a}_{b}"] = {
            str(n): average_scores(s for s, c in zip(scores, counts, strict=True) if c == n
                                   )["prompt_accuracy"]
            for n in sorted(set(counts))}
    if by_digits_report:
        result["prompt_accuracy_by_digits"] = by_digits
        result["per_video"] = per_video
    result.update(videos=len(sessions), frames=last)
    return result


def evaluate_file(path: str | Path, prompt: str | Sequence[int],
                  classifier: DigitClassifier | None = None) -> dict[str, float]:
    """Score a video file (e.g. an MP4 the server wrote) against its prompt."""
    from pomstream.media.mp4 import read_frames

    return score_video(read_frames(path), prompt, classifier)


# -- command line --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pomstream.model.evaluate train|accuracy|reference|file PATH PROMPT``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m pomstream.model.evaluate",
                                 description=__doc__.split("\n")[0])
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
