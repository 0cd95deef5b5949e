"""A torch-free stand-in for StreamGenerator: the engine's failure modes tested in
milliseconds. Frames are deterministic gray images from (seed, frame index); snapshots are
JSON; ``fail_at`` makes a step raise (a model error)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FakeConfig:
    frame_size: int = 16
    fps: int = 8


class FakeSession:
    def __init__(self, prompt: str, seed: int, frame_index: int = 0):
        self.prompt, self.seed, self.frame_index = prompt, seed, frame_index

    def set_prompt(self, prompt: str) -> None:
        if not prompt:
            raise ValueError("empty prompt")
        self.prompt = prompt

    def snapshot(self) -> bytes:
        return json.dumps({"prompt": self.prompt, "seed": self.seed,
                           "frame": self.frame_index}).encode()


class FakeGenerator:
    def __init__(self, fail_at: int | None = None, delay_s: float = 0.0):
        self.cfg = FakeConfig()
        self.fail_at = fail_at  # the step call (0-based) that raises
        self.delay_s = delay_s  # per step: a model that takes time
        self.calls = 0

    def session(self, prompt: str, seed: int = 0, **params) -> FakeSession:
        return FakeSession(prompt, seed)

    def restore(self, data: bytes) -> FakeSession:
        d = json.loads(data)
        return FakeSession(d["prompt"], d["seed"], d["frame"])

    def step(self, sessions: list[FakeSession]) -> list[np.ndarray]:
        call, self.calls = self.calls, self.calls + 1
        time.sleep(self.delay_s)
        if call == self.fail_at:
            raise RuntimeError("model exploded")
        size = self.cfg.frame_size
        frames = []
        for s in sessions:
            value = (s.seed * 37 + s.frame_index * 11) % 200 + 30
            frames.append(np.full((size, size, 3), value, np.uint8))
            s.frame_index += 1
        return frames
