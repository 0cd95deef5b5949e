"""A job a worker holds: its session, encoder, lane and bookkeeping."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pomstream.media.fmp4 import LiveEncoder
from pomstream.model.streaming import StreamSession
from pomstream.server.engine.jobs import JobSettings, SessionJob, VideoJob
from pomstream.server.engine.live_state import LiveState
from pomstream.server.store import Lease


@dataclass(eq=False)
class ActiveJob:
    """A job this worker holds: its session, encoder, lane and bookkeeping."""

    lease: Lease
    job: VideoJob | SessionJob
    config: JobSettings
    session: StreamSession
    encoder: LiveEncoder
    lane: ThreadPoolExecutor
    started: float = field(default_factory=time.monotonic)
    pending: deque[Future] = field(default_factory=deque)
    error: BaseException | None = None  # set by the lane: stop this job
    lost: bool = False  # the lease went to another worker: write nothing more
    progress: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    live: LiveState | None = None  # set for live sessions (pomstream.server.store.sessions)
    first_stored: bool = False  # this run stored a fragment (time to first frame is known)
    stepped_at: int = -1  # the worker's step count when it last stepped (-1: never)
    image: np.ndarray | None = None  # an image job's frame as generated (before encoding)

    @property
    def kind(self) -> str:
        if self.live is not None:
            return "session"
        return "video" if self.job.image_format is None else "image"

    @property
    def id(self) -> str:
        return self.job.id
