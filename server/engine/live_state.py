"""A live session's state inside a worker, and the encoder of one of its runs.

The protocol between viewer and worker (keys, pacing, attach/detach, exact
regeneration, forks) is described in :mod:`pomstream.server.store.sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pomstream.media.fmp4 import LiveEncoder
from pomstream.server.engine.jobs import Ending

TRIM_EVERY = 64  # frames between trims of a session's frame stream


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

    def ready(self, frame_index: int, window: int) -> bool:
        """May the next frame be made now (not paused, within the viewer's window)?"""
        delivered = max(self.acked + 1, self.run_start)
        return not self.paused and frame_index - delivered < window


def new_encoder(width: int, height: int, fps: int, config, stream_index: int) -> LiveEncoder:
    """An encoder whose first frame (stream index ``stream_index``) is a cut (IDR)."""
    return LiveEncoder(width, height, fps, qp=config.qp,
                       keyframe_interval=config.keyframe_interval, start_index=stream_index,
                       cut=True)
