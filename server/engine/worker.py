"""The engine: a worker that turns queued video jobs into frames, fragments and MP4 files.

Threads
-------
A :class:`Worker` runs one *stepping thread* that owns the model. Each pass of its loop:

1. admits jobs from the :class:`~pomstream.server.store.JobQueue` while it has room
   (continuous batching: sessions join and leave between frames, never inside one);
2. drops jobs that were cancelled or deleted, or whose encoding failed;
3. advances the jobs that may step by one frame in a single ``generator.step(sessions)``,
   at most ``max_sessions`` (the batch slots) of them.

Time-slicing: a worker may hold more jobs than it has slots (``max_held``). A PoM session
is a fixed-size state, so holding one costs memory only, and each step takes the ready jobs
that stepped least recently (round robin: equal frame rates for jobs that are always
ready). Beyond its slots a worker takes another job only while its measured frame rate
(frames/s at a full batch) still gives every held job ``min_session_fps``; it reports its
spare room in the worker registry, which the API reads to refuse a live session that
would not get that rate (``server_busy``). Each live session hears every two seconds at
what rate it runs (``status`` events: ``fps``, ``held``, ``slots``).

Everything after the model is done off the stepping thread, on *encode lanes*: a few
single-thread executors, each job pinned to one lane so its work runs in order. Per frame a
lane encodes the frame into an fMP4 fragment (:class:`~pomstream.media.fmp4.LiveEncoder`), appends
it to the job's frame stream and publishes progress. A job whose lane falls too far behind
holds the stepping thread back (bounded memory). A separate *heartbeat thread* refreshes
the leases of every job the worker holds, so a long step never lets a live job go stale.

Crash safety
------------
Every ``snapshot_every`` frames, and after the last one, the stepping thread snapshots each
session (its whole past is a PoM state of fixed size) and queues the save on the job's lane,
*after* that frame's fragment: a stored snapshot of frame k therefore always has fragments
0..k-1 before it. The keyframe interval equals ``snapshot_every``, so frame k starts a GOP
(the snapshot after the last frame is kept for continuing a finished video). A worker that
takes over a job (the first one died; XAUTOCLAIM moved the lease) restores the snapshot,
restarts the encoder at frame k and regenerates frames k, k+1, ... (same seed, same
state: bit for bit when it runs them in a batch of the same size on the same kind of
device; matrix products of other batch sizes, and bf16 on a GPU, round differently, so
the resumed GOP may differ from the lost one by rounding, never by a missing or repeated
frame). Fragments already stored are ignored by index, so the stream never has a gap
or a repeat. The encoder runs at a constant quantizer, so a GOP encodes the same whoever
encodes it and the restarted encoder's pictures match what viewers already decoded. The
sampling parameters and encoder settings are fixed in the job record by the first worker
that starts a job; later workers use those, not their own settings.

Ending a job (always on its lane, after its last fragment)
----------------------------------------------------------
* completed: the frame stream (init + every fragment) is read back and concatenated into
  the final fragmented MP4, which PyAV must decode to exactly the asked number of frames;
  it goes to storage with a thumbnail and a spritesheet, then the record is marked
  completed, its keys get the video TTL and the lease is acked;
* failed or cancelled: the record is marked failed with ``{"code", "message"}``; acked;
* deleted: acked, nothing else is written (the keys are gone);
* lease lost to another worker: dropped silently, the new owner carries on;
* graceful stop (SIGTERM): no new jobs; each session steps on to its next snapshot point
  (at most ``snapshot_every - 1`` frames), is snapshotted, and its lease is released, which
  requeues the job at once for another worker.

Redis outages (``QueueUnavailable``) drop the active jobs locally without acking them;
they come back through XAUTOCLAIM once Redis is back.

Live sessions
-------------
Jobs of kind ``session`` (design in :mod:`pomstream.server.store.sessions`, control in
:mod:`.live`) share the batch with videos. Before every frame the worker reads, in one
round trip, each session's viewer state (pause, what was delivered) and control
messages; a session that is paused or a window ahead of its viewer sits out of that step,
and if nothing may step the thread waits 10 ms. Sessions have no end of their own: they
end as ``detach`` (viewer gone: snapshot, ack or requeue) or ``stop`` (completed), and a
graceful stop snapshots them where they are before releasing.

Metrics (:class:`~pomstream.server.metrics.WorkerMetrics`): frames by kind, frames/s, time to
first frame, per-frame latency (step start to fragment stored) and encode time.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pomstream.model.streaming import StreamGenerator
from pomstream.server.engine.active import ActiveJob
from pomstream.server.engine.admission import Admission
from pomstream.server.engine.endings import Endings
from pomstream.server.engine.extensions import Extensions
from pomstream.server.engine.jobs import Ending, JobError, WorkerDead
from pomstream.server.engine.live import LiveControl
from pomstream.server.logs import log_event
from pomstream.server.metrics import WorkerMetrics
from pomstream.server.storage import Storage
from pomstream.server.store import (
    JobQueue,
    QueueUnavailable,
    SessionStore,
    WorkerRegistry,
    check_id,
)

log = logging.getLogger("pomstream.engine")

SWEEP_EVERY_S = 600  # how often a worker removes expired files from the storage
CALIBRATION_STEPS = 3  # full-batch steps timed at start (the first one warms up)
CALIBRATION_SHARE = 0.8  # of the model's frame rate, until the loop's own is measured


# --- the worker -------------------------------------------------------------------------


class Worker(Admission, Extensions, Endings, LiveControl):
    """Runs video jobs from ``queue`` on ``generator``; ``start()`` it, ``stop()`` it."""

    def __init__(self, queue: JobQueue, generator: StreamGenerator, storage: Storage, *,
                 worker_id: str | None = None, max_sessions: int = 8, snapshot_every: int = 16,
                 qp: int = 20, encode_threads: int = 1, video_ttl_s: int = 86_400,
                 params: dict[str, Any] | None = None, max_pending: int = 32,
                 session_window: int = 8, viewer_timeout_s: float = 15.0,
                 detached_ttl_s: int = 3600, max_active_per_key: int | None = None,
                 max_held: int | None = None, min_session_fps: float = 2.0,
                 max_snapshot_bytes: int | None = None):
        self.queue, self.generator, self.storage = queue, generator, storage
        default_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"w-{socket.gethostname()}-{os.getpid()}")
        self.id = check_id(worker_id or default_id[-64:], "worker id")
        self.max_sessions, self.snapshot_every, self.qp = max_sessions, snapshot_every, qp
        self.max_held = max(max_sessions, max_held or 4 * max_sessions)
        self.min_session_fps = min_session_fps
        self.max_snapshot_bytes = max_snapshot_bytes  # per key, kept by finished jobs
        self._step_no = 0  # steps made: a job's ``stepped_at`` orders the round robin
        self._full_rate: float | None = None  # frames/s of full batches (moving average)
        self._partial_rate = 0.0  # best frames/s of smaller batches (a lower bound)
        self._last_step: tuple[float, int] | None = None  # (its start, its batch size)
        self._idled = False  # the loop waited for a ready job since the last step
        self._reported: tuple[int, float] | None = None  # (spare room, when) last reported
        self.video_ttl_s, self.params, self.max_pending = video_ttl_s, params or {}, max_pending
        self.registry = WorkerRegistry(queue)
        self.sessions = SessionStore(queue, viewer_timeout_s)
        self.detached_ttl_s = detached_ttl_s
        self.max_active_per_key = max_active_per_key  # forks count (None: no limit)
        self.session_window = session_window
        self.metrics = WorkerMetrics()
        cfg = generator.cfg
        self.width = self.height = cfg.frame_size
        self.fps = cfg.fps
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"encode{i}")
                       for i in range(encode_threads)]
        self._next_lane = 0
        self._active: list[ActiveJob] = []
        self._finishing: list[ActiveJob] = []
        self._lock = threading.Lock()  # guards _active/_finishing for the heartbeat thread
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._heart: threading.Thread | None = None
        self.frames_made = 0
        self.crashed: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Worker:
        if self._thread is not None:  # two stepping threads would step every job twice
            raise RuntimeError(f"worker {self.id} was already started")
        self.queue.ensure_group()
        self._calibrate()  # before it counts as alive: its room is known when it is
        self.registry.beat(self.id, self.capacity())
        self._thread = threading.Thread(target=self._run, name="stepper", daemon=True)
        self._heart = threading.Thread(target=self._heartbeat_loop, name="heartbeat",
                                       daemon=True)
        self._thread.start()
        self._heart.start()
        log_event(log, "worker.start", worker=self.id, max_sessions=self.max_sessions)
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        """Graceful stop: no new jobs, snapshot and release the running ones, exit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._heart is not None:
            self._heart.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_alive(self) -> None:
        if not self.alive:
            raise WorkerDead(f"worker {self.id} is not running"
                             + (f": {self.crashed!r}" if self.crashed else ""))

    def capacity(self) -> int:
        """How many jobs this worker holds at most now: its batch slots, and beyond them as
        many as its measured frame rate time-slices at ``min_session_fps`` each."""
        rate = self._full_rate or self._partial_rate
        if self.min_session_fps <= 0:
            return self.max_held
        if not rate:
            return self.max_sessions  # nothing measured yet: no time-slicing
        return max(self.max_sessions, min(self.max_held, int(rate / self.min_session_fps)))

    def _report_capacity(self, taking: int = 0) -> None:
        """Tell the registry how much room is left (``taking``: jobs just taken, not yet
        started): at once when it shrank (the API must not admit into room that is
        gone), when it grew at most 4 times a second, and every heartbeat interval."""
        spare, now = self.capacity() - len(self._active) - taking, time.monotonic()
        last = self._reported
        if last is None or spare < last[0] or (spare > last[0] and now - last[1] >= 0.25) or (
                now - last[1] >= self.queue.heartbeat_interval_s):
            self.registry.beat(self.id, spare)
            self._reported = (spare, now)

    def active_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in list(self._active):
            counts[a.kind] = counts.get(a.kind, 0) + 1
        return counts

    # -- the stepping thread ------------------------------------------------------------

    def _calibrate(self) -> None:
        """At start, when time-slicing has a rate floor: time a full batch of
        throwaway sessions, so the room beyond the slots is known from the start (a burst
        of viewers must not wait for a measurement). The model's step alone is counted at
        CALIBRATION_SHARE: the loop around it costs too, measured once jobs run."""
        if self.min_session_fps <= 0 or self.max_held <= self.max_sessions:
            return
        try:
            # with per-digit layers the dearest prompt: three digits, three streams each
            prompt = "digits 1, 2 and 3" if self.params.get("layers") == "digits" else ""
            sessions = [self.generator.session(prompt, seed=i, **self.params)
                        for i in range(self.max_sessions)]
            times = []
            for _ in range(CALIBRATION_STEPS):
                t0 = time.monotonic()
                self.generator.step(sessions)
                times.append(time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - no calibration: measured on jobs instead
            log_event(log, "worker.calibration_failed", logging.WARNING, error=str(exc))
            return
        step = sorted(times[1:])[len(times[1:]) // 2]  # the first one warms up
        self._full_rate = CALIBRATION_SHARE * self.max_sessions / max(step, 1e-6)
        log_event(log, "worker.calibrated", frames_per_s=round(self._full_rate, 2),
                  capacity=self.capacity())

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._admit()
                    self._report_capacity()
                    if self._active:
                        self._drop_finished_or_stopped()
                        self._step_ready()
                except QueueUnavailable as exc:
                    self._lose_all(exc)
                    self._stop.wait(1.0)
            self._drain()
        except BaseException as exc:  # a bug: say so loudly, leave the leases to XAUTOCLAIM
            self.crashed = exc
            log.exception("worker.crash")
        finally:
            for lane in self._lanes:
                lane.shutdown(wait=True)
            try:
                self.registry.remove(self.id)
            except Exception:  # noqa: BLE001 - Redis may be down at exit; the entry ages out
                pass
            self._stopped.set()
            log_event(log, "worker.stop", worker=self.id, frames=self.frames_made)

    def _admit(self) -> None:
        free = self.capacity() - len(self._active)
        if free <= 0:
            return
        t0 = time.monotonic()
        block = None if self._active else 500
        if block is not None:
            self._idled = True  # nothing to step: the next interval is no measure
        leases = self.queue.take(self.id, count=free, block_ms=block)
        if not leases and not self._active and time.monotonic() - t0 < 0.05:
            self._stop.wait(0.05)  # a backend that does not block (fakeredis): do not spin
        if leases:  # they left the queue: the room they take goes before they start
            self._report_capacity(taking=len(leases))
        for lease in leases:
            self._start_job(lease)

    def _step_ready(self) -> None:
        """Step the jobs that may make a frame now; sessions paused or at the end of their
        viewer's window sit out. More ready jobs than slots: those that stepped least
        recently go (round robin). If none may, wait a moment instead of spinning."""
        ready = [a for a in self._active
                 if a.live is None or a.live.ready(a.session.frame_index, self.session_window)]
        batch = self._turn(ready)
        if batch:
            self._step_or_fail(batch)
        else:
            self._idled = True  # this wait is not the model's time
            self._stop.wait(0.01)

    def _turn(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        """Whose turn it is: at most ``max_sessions`` of ``jobs``, those that stepped least
        recently first (round robin when there are more jobs than slots)."""
        return sorted(jobs, key=lambda a: a.stepped_at)[:self.max_sessions]

    def _drop_finished_or_stopped(self) -> None:
        """Between frames: end jobs that were cancelled, deleted, lost or failed."""
        self._poll_sessions()
        for a in list(self._active):
            if a.lost:
                self._forget(a)
            elif a.error is not None:
                self._retire(a, Ending.FAIL, a.error)
            elif self.queue.is_cancelled(a.id):
                gone = self.queue.get_job(a.id) is None
                reason = None if gone else JobError("cancelled", "the video was cancelled")
                self._retire(a, Ending.FAIL, reason)

    def _step_or_fail(self, batch: list[ActiveJob]) -> None:
        """One batched frame; a model error fails the jobs of that batch, not the worker."""
        try:
            self._step(batch)
        except (QueueUnavailable, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - reported in each job's error
            log.exception("worker.step_error")
            for a in list(batch):
                if a in self._active:
                    self._retire(a, Ending.FAIL, exc)

    def _step(self, batch: list[ActiveJob]) -> None:
        if not batch:
            return
        for a in batch:  # backpressure: a lane far behind holds the model back
            while len(a.pending) > self.max_pending:
                a.pending.popleft().result()
            while a.pending and a.pending[0].done():
                a.pending.popleft()
        t0 = time.monotonic()
        self._measure(t0)
        frames = self.generator.step([a.session for a in batch])
        self._last_step = (t0, len(batch))
        self._step_no += 1
        for a in batch:
            a.stepped_at = self._step_no
        self.frames_made += len(batch)
        self.metrics.rate.add(len(batch))
        for a, frame in zip(list(batch), frames, strict=True):
            made = a.session.frame_index  # frames made so far; this one is made - 1
            self.metrics.frames.inc(kind=a.kind)
            if a.live is not None:
                self._session_frame(a, made, frame, t0)
                continue
            a.pending.append(a.lane.submit(self._on_lane, a, self._emit, a, made - 1, frame,
                                           t0))
            if a.job.image_format is not None:
                a.image = frame  # the picture itself, not its H.264 copy
            # Snapshot at each GOP start, and at the end: a finished video keeps its state
            # (until it expires), so it can be continued later without recomputing it.
            if made >= a.job.frames or made % a.config.keyframe_interval == 0:
                snap = a.session.snapshot()  # now, on this thread: the session moves on
                a.pending.append(a.lane.submit(self._on_lane, a, self._save_snapshot, a,
                                               snap, made))
            if made >= a.job.frames:
                self._retire(a, Ending.FINALIZE)

    def _measure(self, now: float) -> None:
        """The worker's frame rate from the last step: its frames over the wall-clock time
        from its start to this one's (the model, and everything the loop does between
        steps), unless the loop idled meanwhile (nothing was ready: demand, not speed).
        Over full batches (what time-slicing divides), else the best smaller batch (a
        lower bound: a bigger batch makes at least as many frames a second)."""
        last, idled, self._idled = self._last_step, self._idled, False
        if last is None or idled:
            return
        started, size = last
        rate = size / max(now - started, 1e-6)
        if size >= self.max_sessions:
            self._full_rate = rate if self._full_rate is None else (
                0.9 * self._full_rate + 0.1 * rate)
        else:
            self._partial_rate = max(self._partial_rate * 0.999, rate)

    def _retire(self, a: ActiveJob, end: str, error: BaseException | None = None) -> None:
        """Move a job out of the batch; its ``end`` (FINALIZE, FAIL or RELEASE) runs
        on its lane after the work already queued there."""
        with self._lock:
            if a in self._active:
                self._active.remove(a)
            self._finishing.append(a)
        a.lane.submit(self._run_end, a, end, error)

    def _forget(self, a: ActiveJob) -> None:
        """Drop a job without writing anything (its lease is gone)."""
        a.lost = True
        with self._lock:
            if a in self._active:
                self._active.remove(a)
        a.lane.submit(a.encoder.close)
        log_event(log, "job.lost", logging.WARNING, job_id=a.id, worker=self.id)

    def _lose_all(self, exc: BaseException) -> None:
        log_event(log, "worker.redis_unavailable", logging.ERROR, worker=self.id,
                  error=str(exc), dropped=[a.id for a in self._active])
        for a in list(self._active):
            self._forget(a)

    def _drain(self) -> None:
        """Graceful stop: step each session to its next snapshot point, then release it."""
        while True:
            behind = [a for a in self._active if a.error is None and not a.lost
                      and a.live is None  # a session is snapshotted where it is
                      and a.session.frame_index % a.config.keyframe_interval]
            if not behind:
                break
            try:
                self._step_or_fail(self._turn(behind))
            except QueueUnavailable:
                break
        for a in list(self._active):
            if a.live is not None and a.error is None:
                self._queue_snapshot(a)
            self._retire(a, Ending.RELEASE)
        for a in list(self._finishing):
            a.done.wait(60)

    # -- lane tasks (one lane per job: they run in submission order) ----------------------

    def _on_lane(self, a: ActiveJob, fn, *args) -> None:
        if a.error is not None or a.lost:
            return
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the stepping thread
            a.error = exc

    def _store_frame(self, a: ActiveJob, index: int, frame: np.ndarray, t0: float) -> None:
        """Encode a frame and append its fragment; ``t0``: when its step started."""
        start = time.monotonic()
        fragment = a.encoder.encode(frame)
        self.metrics.encode.observe(time.monotonic() - start)
        if fragment.index != index:
            raise RuntimeError(f"encoder at frame {fragment.index}, expected {index}")
        self.queue.append_fragment(a.id, index, fragment.data, fragment.keyframe)
        self.metrics.frame_latency.observe(time.monotonic() - t0, kind=a.kind)
        if not a.first_stored:  # a queue entry's id is its enqueue time in ms
            a.first_stored = True
            queued = int(a.lease.entry_id.split("-")[0]) / 1000
            self.metrics.ttff.observe(max(0.0, time.time() - queued), kind=a.kind)

    def _emit(self, a: ActiveJob, index: int, frame: np.ndarray, t0: float) -> None:
        self._store_frame(a, index, frame, t0)
        progress = min(99, (index + 1) * 100 // a.job.frames)
        if progress > a.progress:
            a.progress = progress
            self.queue.update_job(a.id, progress=progress)
            self.queue.publish_event(a.id, {"type": "progress", "progress": progress,
                                            "frames": index + 1, "total": a.job.frames})

    def _save_snapshot(self, a: ActiveJob, data: bytes, frame: int) -> None:
        self.queue.save_snapshot(a.id, data, frame)

    def _heartbeat_loop(self) -> None:
        interval = self.queue.heartbeat_interval_s
        next_sweep = time.monotonic()
        while not self._stopped.wait(interval):
            try:
                if time.monotonic() >= next_sweep:  # expired videos leave the storage too
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
                    try:
                        self.storage.sweep(self.video_ttl_s)
                    except OSError as exc:
                        log_event(log, "worker.sweep_failed", logging.WARNING, error=str(exc))
                with self._lock:
                    held = self._active + self._finishing
                self.registry.beat(self.id)
                by_entry = {a.lease.entry_id: a for a in held}
                for lease in self.queue.heartbeat([a.lease for a in held]):
                    by_entry[lease.entry_id].lost = True
            except QueueUnavailable as exc:
                log_event(log, "worker.heartbeat_failed", logging.WARNING, error=str(exc))
            except Exception:  # a bug: log it, but never let the leases go unrefreshed
                log.exception("worker.heartbeat_error")
