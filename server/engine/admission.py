"""Starting a job a worker took: its record, settings, session, encoder and lane.
"""

from __future__ import annotations

import logging
from typing import Any

from pomstream.media.fmp4 import LiveEncoder
from pomstream.model.streaming import SnapshotError, StreamSession
from pomstream.server.engine.active import ActiveJob
from pomstream.server.engine.jobs import (
    Ending,
    JobError,
    JobSettings,
    SessionJob,
    VideoJob,
    is_session,
)
from pomstream.server.logs import log_event
from pomstream.server.store import (
    FINAL_STATUSES,
    InitConflict,
    JobNotFound,
    Lease,
    StreamClosed,
)

log = logging.getLogger("pomstream.engine")


class Admission:
    """Part of :class:`~pomstream.server.engine.worker.Worker` (its state lives there)."""

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
            self._retire(active, Ending.FINALIZE)

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

    def _session(self, job: VideoJob | SessionJob,
                 config: JobSettings) -> tuple[StreamSession, int]:
        snap = self.queue.load_snapshot(job.id)
        if snap is None and getattr(job, "extends", None):
            return self._extension_session(job), job.source_frames
        if snap is None:
            return self.generator.session(job.prompt, job.seed, **config.params), 0
        session = self.generator.restore(snap.data)
        return session, session.frame_index
