"""Live sessions in a worker: viewer state and control messages between frames, cuts,
forks and the end of a run (protocol: :mod:`pomstream.server.store.sessions`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pomstream.server.engine.active import ActiveJob
from pomstream.server.engine.jobs import (
    Ending,
    JobError,
    SessionJob,
    fork_job,
)
from pomstream.server.engine.live_state import TRIM_EVERY, LiveState, new_encoder
from pomstream.server.logs import log_event
from pomstream.server.store import (
    FINAL_STATUSES,
    Lease,
)

log = logging.getLogger("pomstream.engine")


class LiveControl:
    """Part of :class:`~pomstream.server.engine.worker.Worker` (its state lives there)."""

    def _start_session(self, lease: Lease) -> None:
        try:
            job = SessionJob.from_payload(lease.job)
        except (KeyError, TypeError, ValueError) as exc:
            self._end_now(lease, JobError("invalid_job", f"malformed session payload: {exc}"))
            return
        record = self.queue.get_job(job.id)
        if record is None or record.get("status") in FINAL_STATUSES:
            self.queue.ack(lease)
            return
        # nobody watches (a new fork): stay detached, expiring in detached_ttl_s
        if self.sessions.settle(job.id, self.detached_ttl_s) != 1:
            self.queue.ack(lease)
            return
        opened = self._open(lease, job, record, "session", lambda config, start: new_encoder(
            self.width, self.height, self.fps, config, start - job.base))
        if opened is None:
            return
        config, session, start, encoder = opened
        active = ActiveJob(lease, job, config, session, encoder, self._pick_lane(),
                           live=LiveState(job.base, start))
        self._activate(active, "live", start)
        log_event(log, "session.run", session_id=job.id, worker=self.id, frame=start)

    def _pick_lane(self) -> ThreadPoolExecutor:
        lane = self._lanes[self._next_lane % len(self._lanes)]
        self._next_lane += 1
        return lane

    def _poll_sessions(self) -> None:
        """Apply each session's viewer state and control messages (one Redis round trip)."""
        live = [a for a in self._active if a.live is not None]
        if not live:
            return
        views, messages = self.sessions.poll({a.id: a.live.cursor for a in live})
        for a in live:
            view = views[a.id]
            a.live.paused, a.live.acked = view.paused, view.acked
            if messages.get(a.id):
                self._controls(a, messages[a.id])
            if a.live.ending is None and not view.viewer:
                a.live.ending = Ending.DETACH
            if a.live.ending:
                self._queue_snapshot(a)
                self._retire(a, a.live.ending)

    def _controls(self, a: ActiveJob, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Apply a batch of control messages between two frames. Prompt changes and keyframe
        requests coalesce into at most one cut (a client that floods prompts costs one
        snapshot per frame, not one per message); a stop ends the batch."""
        prompt, cut = None, False
        for entry_id, message in messages:
            a.live.cursor = entry_id
            op = message.get("op")
            if op == "stop":
                a.live.ending = Ending.STOP
                return
            if op == "prompt" and isinstance(message.get("prompt"), str):
                prompt = message["prompt"]
            elif op == "keyframe":  # a viewer joined mid-run: it needs an IDR frame, and its
                cut = True  # window counts from here (it has seen nothing yet)
                a.live.run_start = a.session.frame_index
            elif op == "fork":
                self._fork(a)
        if prompt is not None and prompt != a.session.prompt:
            try:
                a.session.set_prompt(prompt)
                cut = True
            except (ValueError, TypeError) as exc:  # the API checked it: a bug, say so
                log_event(log, "session.bad_prompt", logging.WARNING, session_id=a.id,
                          error=str(exc))
        if cut:
            self._cut(a)
        # applied (and snapshotted, for a cut): a worker taking over must not apply them again
        ids = [entry_id for entry_id, _ in messages]
        a.pending.append(a.lane.submit(self._on_lane, a, self.sessions.consumed, a.id, *ids))

    def _cut(self, a: ActiveJob) -> None:
        """Restart the encoder at the next frame (an IDR frame) and snapshot there: the
        stream can be regenerated bit for bit from this point (see server.sessions)."""
        index = a.session.frame_index - a.live.base
        a.pending.append(a.lane.submit(self._on_lane, a, self._restart_encoder, a, index))
        self._queue_snapshot(a)

    def _restart_encoder(self, a: ActiveJob, index: int) -> None:
        a.encoder.close()
        a.encoder = new_encoder(self.width, self.height, self.fps, a.config, index)

    def _queue_snapshot(self, a: ActiveJob) -> None:
        snap, frame = a.session.snapshot(), a.session.frame_index  # now: the session moves on
        a.pending.append(a.lane.submit(self._on_lane, a, self._save_snapshot, a, snap, frame))

    def _fork(self, a: ActiveJob) -> None:
        child = fork_job(a.job, a.session.prompt, a.session.frame_index)
        snap = a.session.snapshot()
        a.pending.append(a.lane.submit(self._on_lane, a, self._create_fork, a, child, snap))

    def _create_fork(self, a: ActiveJob, child: SessionJob, snap: bytes) -> None:
        """A fork is running work of its parent's key: it takes one of the key's slots
        (refused with an error event when none is free) and keeps it while detached."""
        limit = self.max_active_per_key
        if limit is not None and not self.queue.claim_slot(child.owner, child.id, limit):
            self.queue.publish_event(a.id, {
                "type": "error", "code": "too_many_active",
                "message": f"this API key already has {limit} videos or live sessions "
                           "(forks and detached sessions included); stop one to fork"})
            return
        self.queue.submit({**child.payload(), "engine": a.config.record()})
        if limit is not None:
            self.queue.confirm_slot(child.owner, child.id)
        self.queue.save_snapshot(child.id, snap, child.base)
        self.queue.publish_event(a.id, {"type": "forked", "fork_id": child.id,
                                        "frame": child.base})
        log_event(log, "session.forked", session_id=a.id, fork_id=child.id, frame=child.base)

    def _session_frame(self, a: ActiveJob, made: int, frame: np.ndarray, t0: float) -> None:
        index = made - 1 - a.live.base  # the fragment's index in the session's frame stream
        a.pending.append(a.lane.submit(self._on_lane, a, self._store_frame, a, index, frame,
                                       t0))
        if (made - a.live.base) % a.config.keyframe_interval == 0:
            self._queue_snapshot(a)
        fps = a.live.rate_due(time.monotonic())
        if fps is not None:  # where it stands: its rate, and how many share the batch
            event = {"type": "status", "status": "live", "frame": made - 1,
                     "fps": round(fps, 2), "held": len(self._active), "slots": self.max_sessions}
            a.pending.append(a.lane.submit(self._on_lane, a, self.queue.publish_event, a.id,
                                           event))
        a.live.frames_since_trim += 1
        if a.live.frames_since_trim >= TRIM_EVERY:  # unlimited length, bounded memory
            a.live.frames_since_trim = 0
            a.pending.append(a.lane.submit(self._on_lane, a, self.sessions.trim, a.id))

    def _end_session(self, a: ActiveJob, end: str) -> None:
        """On the lane, after the session's last fragment and snapshot."""
        frame = a.session.frame_index
        if end == Ending.STOP:
            self.queue.update_job(a.id, state="stopped")
            self.queue.finish_job(a.id, "completed")
            self.sessions.expire(a.id, self.video_ttl_s)
            self._ack(a)
            self._trim_snapshots(a)
        elif self.sessions.settle(a.id, self.detached_ttl_s) == 1:  # a viewer came back
            self.queue.release(a.lease)
        else:  # detached, and already expiring
            self._ack(a)
        log_event(log, f"session.{end}", session_id=a.id, worker=self.id, frame=frame)
