"""A live session's state inside a worker, and the encoder of one of its runs.

The protocol between viewer and worker (keys, pacing, attach/detach, exact
regeneration, forks) is described in :mod:`pomstream.server.store.sessions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pomstream.media.fmp4 import LiveEncoder
from pomstream.server.engine.jobs import Ending

TRIM_EVERY = 64  # frames between trims of a session's frame stream
STATUS_EVERY_S = 2.0  # how often a running session is told its frame rate


@dataclass(eq=False)
class LiveState:
    """What a worker keeps about one running session besides its ActiveJob."""

    base: int  # frame index of fragment 0
    run_start: int  # frame index this run (or its viewer, after a takeover) started at
    cursor: str = "0-0"  # control stream position
    paused: bool = False
    acked: int = -1
    frames_since_trim: int = 0
    ending: Ending | None = None  # DETACH or STOP, once decided
    status_t0: float = field(default_factory=time.monotonic)  # frame-rate window start
    status_frames: int = 0  # frames made in that window

    def ready(self, frame_index: int, window: int) -> bool:
        """May the next frame be made now (not paused, within the viewer's window)?"""
        delivered = max(self.acked + 1, self.run_start)
        return not self.paused and frame_index - delivered < window


    def rate_due(self, now: float) -> float | None:
        """Count a frame; every STATUS_EVERY_S the frame rate since the last report."""
        self.status_frames += 1
        elapsed = now - self.status_t0
        if elapsed < STATUS_EVERY_S:
            return None
        fps = self.status_frames / elapsed
        self.status_t0, self.status_frames = now, 0
        return fps


def new_encoder(width: int, height: int, fps: int, config, stream_index: int) -> LiveEncoder:
    """An encoder whose first frame (stream index ``stream_index``) is a cut (IDR)."""
    return LiveEncoder(width, height, fps, qp=config.qp,
                       keyframe_interval=config.keyframe_interval, start_index=stream_index,
                       cut=True)
