"""How a job ends (always on its lane, after its last fragment): completed, failed,
released, detached or stopped; see the worker's docs.
"""

from __future__ import annotations

import hashlib
import logging
import time

from pomstream.media.images import decode_all, encode_image, encode_png, spritesheet
from pomstream.server.engine.active import ActiveJob
from pomstream.server.engine.jobs import (
    Ending,
    JobError,
)
from pomstream.server.logs import log_event
from pomstream.server.store import (
    JobNotFound,
    Lease,
    QueueUnavailable,
    StreamClosed,
)

log = logging.getLogger("pomstream.engine")


class Endings:
    """Part of :class:`~pomstream.server.engine.worker.Worker` (its state lives there)."""

    def _run_end(self, a: ActiveJob, end: str, error: BaseException | None) -> None:
        try:
            if a.lost:
                return
            if a.error is not None and end != Ending.FAIL:
                end, error = Ending.FAIL, a.error
            if end in (Ending.DETACH, Ending.STOP):
                self._end_session(a, end)
            elif end == Ending.FINALIZE:
                self._finalize(a)
            elif end == Ending.RELEASE:
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
        if a.job.image_format is not None:
            self._finalize_image(a)
            return
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
        # expiry first: a client that sees "completed" sees its expires_at too
        self.queue.expire_job(a.id, self.video_ttl_s)
        self.queue.finish_job(a.id, "completed")
        self.queue.index_content(a.id, sha, self.video_ttl_s, a.job.owner)
        self._ack(a)
        self._trim_snapshots(a)
        elapsed = time.monotonic() - a.started
        log_event(log, "job.completed", job_id=a.id, worker=self.id, frames=a.job.frames,
                  seconds=round(elapsed, 3), bytes=len(data))

    def _finalize_image(self, a: ActiveJob) -> None:
        """An image: its one frame as generated (after a takeover at its very end, as
        decoded from the stored fragment), in the asked format; no MP4, no snapshot."""
        frame = a.image if a.image is not None else decode_all(self._assemble(a))[0]
        self.storage.put(a.id, a.job.image_format, encode_image(frame, a.job.image_format))
        self.queue.expire_job(a.id, self.video_ttl_s)
        self.queue.finish_job(a.id, "completed")
        self.queue.drop_snapshot(a.id)
        self._ack(a)
        log_event(log, "image.completed", job_id=a.id, worker=self.id,
                  seconds=round(time.monotonic() - a.started, 3))

    def _trim_snapshots(self, a: ActiveJob) -> None:
        """A finished job keeps its snapshot; its key's kept ones stay under the cap."""
        if self.max_snapshot_bytes is None:
            return
        try:  # the job is done: a failure here must not mark it failed
            dropped = self.queue.trim_snapshots(a.job.owner, self.max_snapshot_bytes)
        except Exception as exc:  # noqa: BLE001 - the next finished job trims again
            log_event(log, "snapshots.trim_failed", logging.WARNING, owner=a.job.owner,
                      error=str(exc))
            return
        if dropped:
            log_event(log, "snapshots.dropped", owner=a.job.owner, jobs=dropped)

    def _assemble(self, a: ActiveJob) -> bytes:
        """init + every fragment, read back from the frame stream (it has all of them,
        also those written by a worker that died)."""
        init, parts, _ = self.queue.read_stream(a.id)
        if any(i != e.index for i, e in enumerate(parts)):
            raise JobError("encoding_error", "fragments out of order")
        if init is None or len(parts) != a.job.frames:
            raise JobError("encoding_error", f"frame stream holds {len(parts)} of "
                           f"{a.job.frames} fragments")
        return init + b"".join(e.data for e in parts)

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
