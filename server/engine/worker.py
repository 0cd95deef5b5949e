"""The engine: a worker that turns queued video jobs into frames, fragments and MP4 files.

Threads
-------
A :class:`Worker` runs one *stepping thread* that owns the model. Each pass of its loop:

1. admits jobs from the :class:`~server.queue.JobQueue` while it has free slots
   (continuous batching: sessions join and leave between frames, never inside one);
2. drops jobs that were cancelled or deleted, or whose encoding failed;
3. advances *all* active sessions by one frame in a single ``generator.step(sessions)``.

Everything after the model is done off the stepping thread, on *encode lanes*: a few
single-thread executors, each job pinned to one lane so its work runs in order. Per frame a
lane encodes the frame into an fMP4 fragment (:class:`~server.fmp4.LiveEncoder`), appends
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
Jobs of kind ``session`` (design in :mod:`server.sessions`) share the batch with videos.
Before every frame the worker reads, in one round trip, each session's viewer state (pause,
what was delivered) and control messages; a session that is paused or a window ahead of its
viewer sits out of that step, and if nothing may step the thread waits 10 ms. Sessions have
no end of their own: they end as ``detach`` (viewer gone: snapshot, ack or requeue) or
``stop`` (completed), and a graceful stop snapshots them where they are before releasing.

Metrics (:class:`~server.metrics.WorkerMetrics`): frames by kind, frames/s, time to first
frame, per-frame latency (step start to fragment stored) and encode time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pomstream.media.fmp4 import LiveEncoder
from pomstream.media.images import decode_all, encode_png, spritesheet
from pomstream.model.streaming import SnapshotError, StreamGenerator, StreamSession
from pomstream.server.engine.jobs import (
    JobError,
    JobSettings,
    SessionJob,
    VideoJob,
    WorkerDead,
    fork_job,
    is_session,
)
from pomstream.server.engine.live import TRIM_EVERY, LiveState, new_encoder
from pomstream.server.logs import log_event
from pomstream.server.metrics import WorkerMetrics
from pomstream.server.storage import Storage
from pomstream.server.store import (
    FINAL_STATUSES,
    EndEntry,
    FragmentEntry,
    InitConflict,
    InitEntry,
    JobNotFound,
    JobQueue,
    Lease,
    QueueUnavailable,
    SessionStore,
    StreamClosed,
    WorkerRegistry,
    check_id,
)

log = logging.getLogger("pomstream.engine")

SWEEP_EVERY_S = 600  # how often a worker removes expired files from the storage


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
    live: LiveState | None = None  # set for live sessions (server.sessions)
    first_stored: bool = False  # this run stored a fragment (time to first frame is known)

    @property
    def kind(self) -> str:
        return "video" if self.live is None else "session"

    @property
    def id(self) -> str:
        return self.job.id


# --- the worker -------------------------------------------------------------------------


class Worker:
    """Runs video jobs from ``queue`` on ``generator``; ``start()`` it, ``stop()`` it."""

    def __init__(self, queue: JobQueue, generator: StreamGenerator, storage: Storage, *,
                 worker_id: str | None = None, max_sessions: int = 8, snapshot_every: int = 16,
                 qp: int = 20, encode_threads: int = 1, video_ttl_s: int = 86_400,
                 params: dict[str, Any] | None = None, max_pending: int = 32,
                 session_window: int = 8, viewer_timeout_s: float = 15.0):
        self.queue, self.generator, self.storage = queue, generator, storage
        default_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"w-{socket.gethostname()}-{os.getpid()}")
        self.id = check_id(worker_id or default_id[-64:], "worker id")
        self.max_sessions, self.snapshot_every, self.qp = max_sessions, snapshot_every, qp
        self.video_ttl_s, self.params, self.max_pending = video_ttl_s, params or {}, max_pending
        self.registry = WorkerRegistry(queue)
        self.sessions = SessionStore(queue, viewer_timeout_s)
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
        self.queue.ensure_group()
        self.registry.beat(self.id)
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

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has stopped; True if it did within ``timeout``."""
        return self._stopped.wait(timeout)

    @property
    def active_jobs(self) -> int:
        return len(self._active)

    def active_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in list(self._active):
            counts[a.kind] = counts.get(a.kind, 0) + 1
        return counts

    # -- the stepping thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._admit()
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
        free = self.max_sessions - len(self._active)
        if free <= 0:
            return
        t0 = time.monotonic()
        block = None if self._active else 500
        leases = self.queue.take(self.id, count=free, block_ms=block)
        if not leases and not self._active and time.monotonic() - t0 < 0.05:
            self._stop.wait(0.05)  # a backend that does not block (fakeredis): do not spin
        for lease in leases:
            self._start_job(lease)

    def _step_ready(self) -> None:
        """Step the jobs that may make a frame now; sessions paused or at the end of their
        viewer's window sit out. If none may, wait a moment instead of spinning."""
        batch = [a for a in self._active
                 if a.live is None or a.live.ready(a.session.frame_index, self.session_window)]
        if batch:
            self._step_or_fail(batch)
        else:
            self._stop.wait(0.01)

    def _start_job(self, lease: Lease) -> None:
        with self._lock:
            held = [a for a in self._active
                    if a.lease.entry_id == lease.entry_id and not a.lost]
        if held:  # XAUTOCLAIM handed back a job this worker still runs (its lease went
            held[0].lease = lease  # stale in a Redis outage): keep running that one
            return
        if is_session(lease):
            self._start_session(lease)
            return
        try:
            job = VideoJob.from_payload(lease.job)
        except JobError as exc:
            self._end_now(lease, exc)
            return
        record = self.queue.get_job(job.id)
        if record is None or record.get("status") in FINAL_STATUSES:
            self.queue.ack(lease)  # deleted, or finished by a worker that died before acking
            return

        def video_encoder(config, start: int) -> LiveEncoder:
            # a session snapshotted at its end needs no more frames (the encoder stays idle);
            # an extension starts where its source ended, maybe between keyframes (a cut)
            start = start if start < job.frames else 0
            return LiveEncoder(self.width, self.height, self.fps, qp=config.qp,
                               keyframe_interval=config.keyframe_interval, start_index=start,
                               cut=start % config.keyframe_interval != 0)

        opened = self._open(lease, job, record, "job", video_encoder)
        if opened is None:
            return
        config, session, start, encoder = opened
        if job.extends is not None and start == job.source_frames:
            if not self._prepare_extension(lease, job, session, encoder):
                return
        active = ActiveJob(lease, job, config, session, encoder, self._pick_lane(),
                           progress=int(record.get("progress") or 0))
        self._activate(active, "in_progress", start)
        log_event(log, "job.start", job_id=job.id, worker=self.id, start_frame=start,
                  frames=job.frames, resumed=record.get("status") == "in_progress")
        if start >= job.frames:  # snapshotted at its very end: only the MP4 is missing
            self._retire(active, "finalize")

    def _open(self, lease: Lease, job, record: dict, what: str, make_encoder):
        """Restore or create the job's session and encoder and publish its init segment;
        None when the job ended here instead (failed to start, or deleted meanwhile)."""
        try:
            config = self._config(job.id, record)
            session, start = self._session(job, config)
            encoder = make_encoder(config, start)
            self.queue.set_init(job.id, encoder.init_segment(), encoder.mime_type)
        except JobError as exc:
            self._end_now(lease, exc)
            return None
        except (SnapshotError, InitConflict, ValueError, TypeError) as exc:
            self._end_now(lease, JobError("resume_failed", f"cannot start the {what}: {exc}"))
            return None
        except (JobNotFound, StreamClosed):
            self.queue.ack(lease)
            return None
        return config, session, start, encoder

    def _activate(self, active: ActiveJob, status: str, start: int) -> None:
        """Mark the job running, tell its viewers, and let the stepping loop see it."""
        self.queue.update_job(active.job.id, status="in_progress")
        self.queue.publish_event(active.job.id, {"type": "status", "status": status,
                                                 "frame": start})
        with self._lock:
            self._active.append(active)

    def _config(self, job_id: str, record: dict[str, Any]) -> JobSettings:
        if record.get("engine"):
            return JobSettings.from_record(record["engine"])
        config = JobSettings(dict(self.params), self.snapshot_every, self.qp)
        if record.get("extends"):  # its frames must encode like its source's
            source = self._source_record(record["extends"])
            if source.get("engine"):
                config = JobSettings.from_record(source["engine"])
        self.queue.update_job(job_id, engine=config.record())
        return config

    def _source_record(self, source_id: str) -> dict[str, Any]:
        source = self.queue.get_job(source_id)
        if source is None:
            raise JobError("source_expired", f"video {source_id}, which this one extends, "
                           "is gone (deleted or expired)")
        return source

    def _session(self, job: VideoJob | SessionJob,
                 config: JobSettings) -> tuple[StreamSession, int]:
        snap = self.queue.load_snapshot(job.id)
        if snap is None and getattr(job, "extends", None):
            return self._extension_session(job), job.source_frames
        if snap is None:
            return self.generator.session(job.prompt, job.seed, **config.params), 0
        session = self.generator.restore(snap.data)
        return session, session.frame_index

    def _extension_session(self, job: VideoJob) -> StreamSession:
        """The source video's session after its last frame, now with the new prompt."""
        snap = self.queue.load_snapshot(job.extends)
        if snap is None or snap.frame_index != job.source_frames:
            raise JobError("source_expired", f"the saved state of video {job.extends} is gone"
                           " (expired); it can no longer be extended")
        session = self.generator.restore(snap.data)
        session.set_prompt(job.prompt)
        return session

    def _prepare_extension(self, lease: Lease, job: VideoJob, session: StreamSession,
                           encoder: LiveEncoder) -> bool:
        """Copy the source's fragments and save the extension's own first snapshot (from
        then on it needs its source no more); False when the job ended here instead."""
        try:
            self._copy_source_frames(job)
            self.queue.save_snapshot(job.id, session.snapshot(), job.source_frames)
            return True
        except (JobNotFound, StreamClosed):  # deleted meanwhile
            encoder.close()
            self.queue.ack(lease)
        except QueueUnavailable:
            encoder.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a broken source fails this job only
            encoder.close()
            error = exc if isinstance(exc, JobError) else JobError(
                "source_incompatible", f"cannot continue video {job.extends}: {exc}")
            self._end_now(lease, error)
        return False

    def _copy_source_frames(self, job: VideoJob) -> None:
        """Put the source video's fragments first in this job's frame stream (once: a
        worker that takes the job over goes on after the last one stored)."""
        have = self.queue.last_fragment_index(job.id) + 1
        if have >= job.source_frames:
            return
        init, own = self.queue.get_init(job.extends), self.queue.get_init(job.id)
        if own is None:
            raise JobNotFound(job.id)
        if init is None or init.data != own.data:
            raise JobError("source_incompatible", f"video {job.extends} was encoded with "
                           "other settings; it cannot be extended by this server")
        cursor = "0-0"
        while have < job.source_frames:
            entries = self.queue.read_fragments(job.extends, after=cursor, count=256)
            if not entries:
                raise JobError("source_expired", f"the frames of video {job.extends} are gone")
            for entry in entries:
                if isinstance(entry, FragmentEntry) and have <= entry.index < job.source_frames:
                    self.queue.append_fragment(job.id, entry.index, entry.data, entry.keyframe)
                    have = entry.index + 1
            cursor = entries[-1].entry_id

    def _drop_finished_or_stopped(self) -> None:
        """Between frames: end jobs that were cancelled, deleted, lost or failed."""
        self._poll_sessions()
        for a in list(self._active):
            if a.lost:
                self._forget(a)
            elif a.error is not None:
                self._retire(a, "fail", a.error)
            elif self.queue.is_cancelled(a.id):
                gone = self.queue.get_job(a.id) is None
                reason = None if gone else JobError("cancelled", "the video was cancelled")
                self._retire(a, "fail", reason)

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
                    self._retire(a, "fail", exc)

    def _step(self, batch: list[ActiveJob]) -> None:
        if not batch:
            return
        for a in batch:  # backpressure: a lane far behind holds the model back
            while len(a.pending) > self.max_pending:
                a.pending.popleft().result()
            while a.pending and a.pending[0].done():
                a.pending.popleft()
        t0 = time.monotonic()
        frames = self.generator.step([a.session for a in batch])
        self.frames_made += len(batch)
        self.metrics.rate.add(len(batch))
        for a, frame in zip(list(batch), frames, strict=True):
            made = a.session.frame_index  # frames made so far; this one is made - 1
            self.metrics.frames.inc(kind=a.kind)
            if a.live is not None:
                self._session_frame(a, made, frame, t0)
                continue
            a.pending.append(a.lane.submit(self._guarded, a, self._emit, a, made - 1, frame,
                                           t0))
            # Snapshot at each GOP start, and at the end: a finished video keeps its state
            # (until it expires), so it can be continued later without recomputing it.
            if made >= a.job.frames or made % a.config.keyframe_interval == 0:
                snap = a.session.snapshot()  # now, on this thread: the session moves on
                a.pending.append(a.lane.submit(self._guarded, a, self._save_snapshot, a,
                                               snap, made))
            if made >= a.job.frames:
                self._retire(a, "finalize")

    def _retire(self, a: ActiveJob, end: str, error: BaseException | None = None) -> None:
        """Move a job out of the batch; its ``end`` ("finalize", "fail" or "release") runs
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
                self._step_or_fail(behind)
            except QueueUnavailable:
                break
        for a in list(self._active):
            if a.live is not None and a.error is None:
                self._queue_snapshot(a)
            self._retire(a, "release")
        for a in list(self._finishing):
            a.done.wait(60)

    # -- lane tasks (one lane per job: they run in submission order) ----------------------

    def _guarded(self, a: ActiveJob, fn, *args) -> None:
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

    def _run_end(self, a: ActiveJob, end: str, error: BaseException | None) -> None:
        try:
            if a.lost:
                return
            if a.error is not None and end != "fail":
                end, error = "fail", a.error
            if end in ("detach", "stop"):
                self._end_session(a, end)
            elif end == "finalize":
                self._finalize(a)
            elif end == "release":
                self._release(a)
            else:
                self._fail(a, error)
        except (JobNotFound, StreamClosed):
            self._ack(a)  # deleted (or already ended) meanwhile: nothing left to write
        except QueueUnavailable as exc:
            log_event(log, "job.end_failed", logging.ERROR, job_id=a.id, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - last resort: record the failure
            log.exception("job.end_error")
            try:
                self._fail(a, exc)
            except Exception:  # noqa: BLE001 - Redis gone too; XAUTOCLAIM retries the job
                pass
        finally:
            a.encoder.close()
            with self._lock:
                if a in self._finishing:
                    self._finishing.remove(a)
            a.done.set()

    def _finalize(self, a: ActiveJob) -> None:
        data = self._assemble(a)
        frames = decode_all(data)
        if len(frames) != a.job.frames:
            raise JobError("encoding_error", f"the video decodes to {len(frames)} frames, "
                           f"expected {a.job.frames}")
        self.storage.put(a.id, "video", data)
        self.storage.put(a.id, "thumbnail", encode_png(frames[len(frames) // 2]))
        self.storage.put(a.id, "spritesheet", encode_png(spritesheet(frames)))
        sha = hashlib.sha256(data).hexdigest()  # the file names its video (extensions)
        self.queue.update_job(a.id, sha256=sha)
        self.queue.finish_job(a.id, "completed")
        self.queue.expire_job(a.id, self.video_ttl_s)
        self.queue.index_content(a.id, sha, self.video_ttl_s)
        self._ack(a)
        elapsed = time.monotonic() - a.started
        log_event(log, "job.completed", job_id=a.id, worker=self.id, frames=a.job.frames,
                  seconds=round(elapsed, 3), bytes=len(data))

    def _assemble(self, a: ActiveJob) -> bytes:
        """init + every fragment, read back from the frame stream (it has all of them,
        also those written by a worker that died)."""
        init, parts, after = None, [], "0-0"
        while True:
            entries = self.queue.read_fragments(a.id, after=after, count=512)
            if not entries:
                break
            after = entries[-1].entry_id
            for e in entries:
                if isinstance(e, InitEntry):
                    init = e.data
                elif isinstance(e, FragmentEntry):
                    if e.index != len(parts):
                        raise JobError("encoding_error", f"fragment {e.index} out of order")
                    parts.append(e.data)
        if init is None or len(parts) != a.job.frames:
            raise JobError("encoding_error", f"frame stream holds {len(parts)} of "
                           f"{a.job.frames} fragments")
        return init + b"".join(parts)

    def _fail(self, a: ActiveJob, error: BaseException | None) -> None:
        if error is None or isinstance(error, JobNotFound):  # deleted: nothing to mark
            self._ack(a)
            log_event(log, "job.deleted", job_id=a.id, worker=self.id)
            return
        if isinstance(error, QueueUnavailable):
            raise error
        reason = error if isinstance(error, JobError) else JobError(
            "generation_error", f"{type(error).__name__}: {error}")
        self.queue.finish_job(a.id, "failed", reason.payload())
        self.queue.expire_job(a.id, self.video_ttl_s)
        self._ack(a)
        level = logging.INFO if reason.code == "cancelled" else logging.ERROR
        log_event(log, "job.failed", level, job_id=a.id, worker=self.id, code=reason.code,
                  error=reason.message)

    def _release(self, a: ActiveJob) -> None:
        self.queue.release(a.lease)
        log_event(log, "job.released", job_id=a.id, worker=self.id,
                  frame=a.session.frame_index)

    def _ack(self, a: ActiveJob) -> None:
        self.queue.ack(a.lease)

    def _end_now(self, lease: Lease, error: JobError) -> None:
        """Fail a job that never became active."""
        try:
            self.queue.finish_job(lease.job_id, "failed", error.payload())
            self.queue.expire_job(lease.job_id, self.video_ttl_s)
        except (JobNotFound, StreamClosed, ValueError):
            pass
        self.queue.ack(lease)
        log_event(log, "job.failed", logging.ERROR, job_id=lease.job.get("id"),
                  worker=self.id, code=error.code, error=error.message)

    # -- live sessions (design: server.sessions) ------------------------------------------

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
        if self.sessions.settle(job.id) != 1:  # nobody watches (a new fork): stay detached
            self.queue.ack(lease)
            self.sessions.expire(job.id, self.video_ttl_s)
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
                a.live.ending = "detach"
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
                a.live.ending = "stop"
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
        a.pending.append(a.lane.submit(self._guarded, a, self.sessions.consumed, a.id, *ids))

    def _cut(self, a: ActiveJob) -> None:
        """Restart the encoder at the next frame (an IDR frame) and snapshot there: the
        stream can be regenerated bit for bit from this point (see server.sessions)."""
        index = a.session.frame_index - a.live.base
        a.pending.append(a.lane.submit(self._guarded, a, self._restart_encoder, a, index))
        self._queue_snapshot(a)

    def _restart_encoder(self, a: ActiveJob, index: int) -> None:
        a.encoder.close()
        a.encoder = new_encoder(self.width, self.height, self.fps, a.config, index)

    def _queue_snapshot(self, a: ActiveJob) -> None:
        snap, frame = a.session.snapshot(), a.session.frame_index  # now: the session moves on
        a.pending.append(a.lane.submit(self._guarded, a, self._save_snapshot, a, snap, frame))

    def _fork(self, a: ActiveJob) -> None:
        child = fork_job(a.job, a.session.prompt, a.session.frame_index)
        snap = a.session.snapshot()
        a.pending.append(a.lane.submit(self._guarded, a, self._create_fork, a, child, snap))

    def _create_fork(self, a: ActiveJob, child: SessionJob, snap: bytes) -> None:
        self.queue.submit({**child.payload(), "engine": a.config.record()})
        self.queue.save_snapshot(child.id, snap, child.base)
        self.queue.publish_event(a.id, {"type": "forked", "fork_id": child.id,
                                        "frame": child.base})
        log_event(log, "session.forked", session_id=a.id, fork_id=child.id, frame=child.base)

    def _session_frame(self, a: ActiveJob, made: int, frame: np.ndarray, t0: float) -> None:
        index = made - 1 - a.live.base  # the fragment's index in the session's frame stream
        a.pending.append(a.lane.submit(self._guarded, a, self._store_frame, a, index, frame,
                                       t0))
        if (made - a.live.base) % a.config.keyframe_interval == 0:
            self._queue_snapshot(a)
        a.live.frames_since_trim += 1
        if a.live.frames_since_trim >= TRIM_EVERY:  # unlimited length, bounded memory
            a.live.frames_since_trim = 0
            a.pending.append(a.lane.submit(self._guarded, a, self.sessions.trim, a.id))

    def _end_session(self, a: ActiveJob, end: str) -> None:
        """On the lane, after the session's last fragment and snapshot."""
        frame = a.session.frame_index
        if end == "stop":
            self.queue.update_job(a.id, state="stopped")
            self.queue.finish_job(a.id, "completed")
            self.sessions.expire(a.id, self.video_ttl_s)
            self._ack(a)
        elif self.sessions.settle(a.id) == 1:  # a viewer attached meanwhile: run it again
            self.queue.release(a.lease)
        else:
            self._ack(a)
            self.sessions.expire(a.id, self.video_ttl_s)
        log_event(log, f"session.{end}", session_id=a.id, worker=self.id, frame=frame)

    # -- the heartbeat thread -----------------------------------------------------------

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


def read_stream(queue: JobQueue, job_id: str) -> tuple[bytes | None, list[bytes], EndEntry | None]:
    """The init segment, fragments and end entry stored so far (tests and tools)."""
    init, parts, end, after = None, [], None, "0-0"
    while entries := queue.read_fragments(job_id, after=after, count=512):
        after = entries[-1].entry_id
        for e in entries:
            if isinstance(e, InitEntry):
                init = e.data
            elif isinstance(e, FragmentEntry):
                parts.append(e.data)
            elif isinstance(e, EndEntry):
                end = e
    return init, parts, end

