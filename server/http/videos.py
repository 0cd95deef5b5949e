"""OpenAI's videos API: ``POST /v1/videos`` (JSON, multipart or urlencoded form: prompt,
model, seconds, size, plus ``seed``), ``POST /v1/videos/{id}/remix`` (same seed and length,
new prompt), ``POST /v1/videos/extensions`` (a completed video continued from its saved
state: only the new frames are computed), ``GET /v1/videos/{id}``, ``GET /v1/videos``
(after, limit, order), ``DELETE /v1/videos/{id}``, ``GET /v1/videos/{id}/content?variant=
video|thumbnail|spritesheet``, and ``POST /v1/videos/{id}/cancel`` (not in OpenAI's API).

Handlers are thin: they validate a request (:mod:`.validation`), call the store (through
a thread, as the Redis client is synchronous) or the storage, and shape the answer.
Workers do everything else (:mod:`pomstream.server.engine`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, field_validator

from pomstream.server.engine.jobs import VideoJob
from pomstream.server.http.bodies import openapi_body, parse_body, read_body
from pomstream.server.http.deps import (
    Owner,
    RuntimeDep,
    SettingsDep,
    Tenant,
    submit_within_limit,
)
from pomstream.server.http.errors import ApiError, not_found
from pomstream.server.http.validation import (
    check_prompt,
    check_seed,
    check_size,
    check_video_id,
    no_bool,
    parse_seconds,
)
from pomstream.server.logs import log_event
from pomstream.server.runtime import Runtime
from pomstream.server.settings import ModelInfo, Settings
from pomstream.server.storage import MEDIA_TYPES, VIDEO_VARIANTS
from pomstream.server.store import JobNotFound, new_job_id

log = logging.getLogger("pomstream.api")

FINAL = ("completed", "failed")


# --- the protocol -----------------------------------------------------------------------


class CreateVideoRequest(BaseModel):
    """The body of ``POST /v1/videos``; ``seconds`` may be "4" (OpenAI's type) or 4."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    seconds: int | str | None = None
    size: str | None = None
    seed: int | None = None

    _no_bools = field_validator("seconds", "seed", mode="before")(no_bool)


class RemixRequest(BaseModel):
    """The body of ``POST /v1/videos/{id}/remix``: the new prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str


class VideoReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str


class ExtendRequest(BaseModel):
    """The body of ``POST /v1/videos/extensions``. ``video`` names the video to go on
    from: ``{"id": ...}`` (in a form: a field ``video[id]``), or, in a multipart form, the
    MP4 file this server made (it is recognised by its SHA-256)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    seconds: int | str
    video: VideoReference

    _no_bools = field_validator("seconds", mode="before")(no_bool)


def build_job(req: CreateVideoRequest, info: ModelInfo, settings: Settings,
              owner: str = "local") -> VideoJob:
    """Check a request against the model and the limits; the job to queue."""
    prompt = check_prompt(req.prompt, info.prompt_rules)
    if req.model is not None and req.model not in (info.name, settings.model):
        raise ApiError(400, f"unknown model {req.model!r}; this server serves {info.name!r}",
                       param="model", code="invalid_value")
    size = check_size(req.size, info.size)
    seconds = parse_seconds(req.seconds, settings.default_seconds, settings.max_seconds)
    seed = check_seed(req.seed)
    return VideoJob(id=new_job_id("video"), prompt=prompt, frames=seconds * info.fps,
                    seed=seed, seconds=str(seconds), size=size, model=info.name, owner=owner)


def remix_job(source: dict[str, Any], req: RemixRequest, info: ModelInfo,
              owner: str = "local") -> VideoJob:
    """A new video like ``source`` (same seed, length and size) with another prompt: the
    same noise drawn into other content."""
    _require_completed(source)
    return VideoJob(id=new_job_id("video"), prompt=check_prompt(req.prompt, info.prompt_rules),
                    frames=int(source["frames"]), seed=int(source["seed"]),
                    seconds=str(source["seconds"]), size=str(source["size"]),
                    model=info.name, remixed_from_video_id=source["id"], owner=owner)


def extension_job(source: dict[str, Any], req: ExtendRequest, info: ModelInfo,
                  settings: Settings, owner: str = "local") -> VideoJob:
    """``source``'s frames followed by ``req.seconds`` new ones, generated on from the
    state saved after its last frame (the new video's ``seconds`` is the total)."""
    _require_completed(source)
    seconds = parse_seconds(req.seconds, settings.default_seconds, settings.max_seconds)
    total = int(source["seconds"]) + seconds
    if total > settings.max_total_seconds:
        raise ApiError(400, f"the extended video would last {total} s; at most "
                       f"{settings.max_total_seconds} s are allowed", param="seconds",
                       code="invalid_value")
    return VideoJob(id=new_job_id("video"), prompt=check_prompt(req.prompt, info.prompt_rules),
                    frames=int(source["frames"]) + seconds * info.fps,
                    seed=int(source["seed"]), seconds=str(total), size=str(source["size"]),
                    model=info.name, extends=source["id"], source_frames=int(source["frames"]),
                    owner=owner)


def _require_completed(source: dict[str, Any]) -> None:
    if source.get("status") != "completed":
        raise ApiError(409, f"video {source['id']} is {source.get('status')}; only a completed "
                       "video can be remixed or extended", param="video_id",
                       code="video_not_ready")


def video_object(record: dict[str, Any]) -> dict[str, Any]:
    """A job record as OpenAI's Video object."""
    return {
        "id": record["id"], "object": "video", "created_at": record.get("created_at"),
        "completed_at": record.get("completed_at"), "expires_at": record.get("expires_at"),
        "status": record.get("status"), "progress": int(record.get("progress") or 0),
        "model": record.get("model"), "prompt": record.get("prompt"),
        "seconds": str(record.get("seconds")), "size": record.get("size"),
        "error": record.get("error"),
        "remixed_from_video_id": record.get("remixed_from_video_id"),
        "extended_from_video_id": record.get("extends"),  # not in OpenAI's object
    }


# --- the routes -------------------------------------------------------------------------

router = APIRouter(prefix="/v1")


async def _submit(rt: Runtime, settings: Settings, tenant: Tenant, job: VideoJob
                  ) -> dict[str, Any]:
    if rt.worker is not None:  # serve: its only worker died, a job would wait forever
        rt.worker.check_alive()
    await anyio.to_thread.run_sync(submit_within_limit, rt.queue, settings, tenant.owner,
                                   job.payload())
    record = await anyio.to_thread.run_sync(rt.queue.get_job, job.id)
    log_event(log, "video.created", job_id=job.id, frames=job.frames,
              remixed_from=job.remixed_from_video_id, extends=job.extends)
    return video_object(record or {**job.payload(), "status": "queued"})


@router.post("/videos", openapi_extra=openapi_body(CreateVideoRequest))
async def create_video(request: Request, tenant: Owner, rt: RuntimeDep,
                       settings: SettingsDep):
    req = parse_body(CreateVideoRequest, await read_body(request))
    return await _submit(rt, settings, tenant, build_job(req, rt.info, settings, tenant.owner))


@router.post("/videos/extensions", openapi_extra=openapi_body(ExtendRequest))
async def extend_video(request: Request, tenant: Owner, rt: RuntimeDep,
                       settings: SettingsDep):
    body = await read_body(request, files=True)
    if "video[id]" in body:  # a form flattens the object
        body["video"] = {"id": body.pop("video[id]")}
    elif isinstance(body.get("video"), bytes):  # the file itself
        body["video"] = {"id": await _video_of_file(rt, body["video"], tenant)}
    req = parse_body(ExtendRequest, body)
    source = await anyio.to_thread.run_sync(_get_record, rt, req.video.id, tenant)
    job = extension_job(source, req, rt.info, settings, tenant.owner)
    snap = await anyio.to_thread.run_sync(rt.queue.load_snapshot, source["id"])
    if snap is None or snap.frame_index != job.source_frames:
        raise ApiError(409, f"the saved state of video {source['id']} is gone (expired, "
                       "or dropped to keep this key's stored states under its cap); it can "
                       "no longer be extended", param="video",
                       code="video_expired")
    return await _submit(rt, settings, tenant, job)


@router.post("/videos/{video_id}/remix", openapi_extra=openapi_body(RemixRequest))
async def remix_video(request: Request, video_id: str, tenant: Owner, rt: RuntimeDep,
                      settings: SettingsDep):
    req = parse_body(RemixRequest, await read_body(request))
    source = await anyio.to_thread.run_sync(_get_record, rt, video_id, tenant)
    return await _submit(rt, settings, tenant, remix_job(source, req, rt.info, tenant.owner))


@router.get("/videos")
def list_videos(tenant: Owner, rt: RuntimeDep, after: str | None = None,
                limit: int = Query(20, ge=1, le=100),
                order: Literal["asc", "desc"] = "desc"):
    if after is not None:
        check_video_id(after)
    try:
        page = rt.queue.list_jobs(after=after, limit=limit, order=order, kind="video",
                                  owner=tenant.listing)
    except JobNotFound:
        raise ApiError(404, f"no video with id {after!r} (after)", param="after",
                       code="not_found") from None
    data = [video_object(r) for r in page.jobs]
    return {"object": "list", "data": data, "first_id": page.first_id,
            "last_id": page.last_id, "has_more": page.has_more}


@router.get("/videos/{video_id}")
def retrieve_video(video_id: str, tenant: Owner, rt: RuntimeDep):
    record = _get_record(rt, video_id, tenant)
    headers = {} if record["status"] in FINAL else {"openai-poll-after-ms": "200"}
    return JSONResponse(video_object(record), headers=headers)


@router.delete("/videos/{video_id}")
def delete_video(video_id: str, tenant: Owner, rt: RuntimeDep):
    _get_record(rt, video_id, tenant)
    rt.queue.delete_job(video_id)  # a running worker sees it and stops
    rt.storage.delete(video_id)
    log_event(log, "video.deleted", job_id=video_id)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


@router.post("/videos/{video_id}/cancel")
def cancel_video(video_id: str, tenant: Owner, rt: RuntimeDep):
    record = _get_record(rt, video_id, tenant)
    if record["status"] in FINAL:
        raise ApiError(409, f"video {video_id} is already {record['status']}",
                       param="video_id", code="invalid_state")
    rt.queue.cancel(video_id)
    return video_object(record)


@router.get("/videos/{video_id}/content")
def download(video_id: str, tenant: Owner, rt: RuntimeDep, variant: str = "video"):
    if variant not in VIDEO_VARIANTS:
        raise ApiError(400, f"variant must be one of {sorted(VIDEO_VARIANTS)}",
                       param="variant", code="invalid_value")
    record = _get_record(rt, video_id, tenant)
    if record["status"] != "completed":
        raise ApiError(409, f"video {video_id} is {record['status']}, not completed",
                       param="video_id", code="video_not_ready")
    handle = rt.storage.open(video_id, variant)
    if handle is None:
        raise ApiError(404, f"the {variant} of video {video_id} is gone (expired)",
                       param="video_id", code="not_found")
    size = os.fstat(handle.fileno()).st_size if hasattr(handle, "fileno") else None
    headers = {"Content-Length": str(size)} if size is not None else None
    return StreamingResponse(_chunks(handle), media_type=MEDIA_TYPES[variant],
                             headers=headers)


def _get_record(rt: Runtime, video_id: str, tenant: Tenant) -> dict[str, Any]:
    """The video's record; 404 when there is none, or it is a session, or another key's
    (the same answer: nobody learns that another key's video exists)."""
    record = rt.queue.get_job(check_video_id(video_id))
    if record is None or record.get("kind", "video") != "video" or not tenant.owns(record):
        raise not_found(video_id)
    return record


def _chunks(handle, size: int = 64 * 1024) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(size):
            yield chunk


async def _video_of_file(rt: Runtime, data: bytes, tenant: Tenant) -> str:
    sha = hashlib.sha256(data).hexdigest()
    video_id = await anyio.to_thread.run_sync(rt.queue.find_by_content, sha, tenant.owner)
    record = video_id and await anyio.to_thread.run_sync(rt.queue.get_job, video_id)
    if not record or not tenant.owns(record):
        raise ApiError(400, "the uploaded file is none of this server's videos (or it "
                       "expired); only videos made here can be extended: send the file as "
                       "downloaded, or the video's id as video[id]", param="video",
                       code="unknown_video_file")
    return video_id
