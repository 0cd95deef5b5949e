"""Extensions: a video continued from the final snapshot of a finished one; its first
frames are the source's fragments, copied.
"""

from __future__ import annotations

import logging
from typing import Any

from pomstream.media.fmp4 import LiveEncoder
from pomstream.model.streaming import StreamSession
from pomstream.server.engine.jobs import (
    JobError,
    VideoJob,
)
from pomstream.server.store import (
    FragmentEntry,
    JobNotFound,
    Lease,
    QueueUnavailable,
    StreamClosed,
)

log = logging.getLogger("pomstream.engine")


class Extensions:
    """Part of :class:`~pomstream.server.engine.worker.Worker` (its state lives there)."""

    def _source_record(self, source_id: str) -> dict[str, Any]:
        source = self.queue.get_job(source_id)
        if source is None:
            raise JobError("source_expired", f"video {source_id}, which this one extends, "
                           "is gone (deleted or expired)")
        return source

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
