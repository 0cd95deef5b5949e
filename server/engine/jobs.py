"""What a job is: the payloads of queued videos and sessions, how a job is produced
(:class:`JobSettings`), and the engine's errors. Torch-free: the API builds jobs too."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pomstream.server.store import Lease, check_id, new_job_id

# --- errors -----------------------------------------------------------------------------


class EngineError(Exception):
    """Base class of the engine's errors."""


class JobError(EngineError):
    """A job that cannot be produced; ``code`` and ``message`` go into the video's error."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def payload(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class WorkerDead(EngineError, RuntimeError):
    """The worker's stepping thread is not running (crashed or stopped)."""


# --- jobs -------------------------------------------------------------------------------


IMAGE_FORMATS = ("png", "jpeg", "webp")  # an image job's file (server.storage variants)


@dataclass(frozen=True)
class VideoJob:
    """What a queued video job asks for (the payload of its queue entry). With
    ``image_format`` it is a still image (kind ``image``): one frame, stored as that file
    instead of an MP4, the first frame a video or session of the same seed would show."""

    id: str
    prompt: str
    frames: int
    seed: int
    seconds: str
    size: str
    model: str
    remixed_from_video_id: str | None = None
    # an extension: the first ``source_frames`` frames are those of video ``extends``,
    # continued from its final snapshot (only the new frames are computed)
    extends: str | None = None
    source_frames: int = 0
    owner: str = "local"  # the hash of the API key that asked for it (see http/deps.py)
    image_format: str | None = None

    def payload(self) -> dict[str, Any]:
        data = {"kind": "video", "id": self.id, "prompt": self.prompt, "frames": self.frames,
                "seed": self.seed, "seconds": self.seconds, "size": self.size,
                "model": self.model, "remixed_from_video_id": self.remixed_from_video_id,
                "extends": self.extends, "source_frames": self.source_frames,
                "owner": self.owner}
        if self.image_format is not None:
            data.update(kind="image", image_format=self.image_format)
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> VideoJob:
        try:
            job = cls(id=check_id(data["id"], "job id"), prompt=str(data["prompt"]),
                      frames=int(data["frames"]), seed=int(data["seed"]),
                      seconds=str(data["seconds"]), size=str(data["size"]),
                      model=str(data["model"]),
                      remixed_from_video_id=data.get("remixed_from_video_id"),
                      extends=data.get("extends") and check_id(data["extends"], "video id"),
                      source_frames=int(data.get("source_frames") or 0),
                      owner=check_id(str(data.get("owner") or "local"), "owner"),
                      image_format=data.get("image_format"))
        except (KeyError, TypeError, ValueError) as exc:
            raise JobError("invalid_job", f"malformed job payload: {exc}") from exc
        if not 0 <= job.source_frames < job.frames:
            raise JobError("invalid_job", f"a video needs at least one new frame, got "
                           f"{job.frames} frames of which {job.source_frames} exist")
        if (job.extends is None) != (job.source_frames == 0):
            raise JobError("invalid_job", "an extension names its source and its frames")
        if job.image_format is not None and (job.image_format not in IMAGE_FORMATS
                                             or job.frames != 1 or job.extends is not None):
            raise JobError("invalid_job", f"an image is one new frame in one of "
                           f"{IMAGE_FORMATS}")
        return job


@dataclass(frozen=True)
class JobSettings:
    """How a job is produced; fixed in the job record when its first worker starts it."""

    params: dict[str, Any]
    keyframe_interval: int
    qp: int

    def record(self) -> dict[str, Any]:
        return {"params": self.params, "keyframe_interval": self.keyframe_interval,
                "qp": self.qp}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> JobSettings:
        return cls(dict(data["params"]), int(data["keyframe_interval"]), int(data["qp"]))


@dataclass(frozen=True)
class SessionJob:
    """What a queued session job carries (the payload of its queue entry)."""

    id: str
    prompt: str
    seed: int
    size: str
    model: str
    base: int = 0  # frame index of fragment 0 (a fork's starting frame)
    forked_from: str | None = None
    owner: str = "local"  # the hash of the API key that started it (forks inherit it)
    frames = None  # unlimited

    def payload(self) -> dict[str, Any]:
        return {"kind": "session", "id": self.id, "prompt": self.prompt, "seed": self.seed,
                "size": self.size, "model": self.model, "base": self.base,
                "forked_from": self.forked_from, "owner": self.owner, "state": "queued"}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> SessionJob:
        return cls(id=check_id(data["id"], "session id"), prompt=str(data["prompt"]),
                   seed=int(data["seed"]), size=str(data["size"]), model=str(data["model"]),
                   base=int(data.get("base") or 0), forked_from=data.get("forked_from"),
                   owner=check_id(str(data.get("owner") or "local"), "owner"))


def new_session_id() -> str:
    return new_job_id("sess")


def fork_job(parent: SessionJob, prompt: str, frame: int) -> SessionJob:
    return SessionJob(id=new_session_id(), prompt=prompt, seed=parent.seed, size=parent.size,
                      model=parent.model, base=frame, forked_from=parent.id,
                      owner=parent.owner)


def is_session(lease: Lease) -> bool:
    return lease.job.get("kind") == "session"


class Ending(StrEnum):
    """How a job leaves its worker (see the worker's docs, "Ending a job")."""

    FINALIZE = "finalize"  # a video's last frame is made: assemble, store, complete
    FAIL = "fail"  # an error, a cancel or a deletion
    RELEASE = "release"  # graceful stop: snapshot and requeue for another worker
    DETACH = "detach"  # a live session's viewer left: snapshot, wait for a resume
    STOP = "stop"  # a live session stopped by its viewer: completed
