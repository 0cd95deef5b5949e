"""OpenAI's images API: ``POST /v1/images/generations`` and ``GET /v1/images/{id}/content``.

An image is one frame generated through the same queue and workers as videos: job kind
``image``, one frame, the first frame a video or live session with the same prompt and
seed would show (image ``i`` of a request uses ``seed + i``). The request waits until the
workers made all ``n`` images (at most ``POMSTREAM_IMAGE_TIMEOUT_S``; then its jobs are
deleted and the answer is a 504) and answers as OpenAI does::

    {"created": 1767000000, "data": [{"b64_json": "..."}], "output_format": "png",
     "size": "64x64"}

Body (JSON or form): ``prompt``; ``model`` (the served one, or absent); ``n`` (1 to
``POMSTREAM_MAX_IMAGES``); ``size`` ("auto" or the model's size); ``response_format``
``b64_json`` (default) or ``url`` (a link to ``GET /v1/images/{id}/content``, which needs
the same API key, kept like a video's files); ``output_format`` ``png`` (default), ``jpeg``
or ``webp``; ``seed`` (not in OpenAI's API). Each image counts against the key's running
work while it is made.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, field_validator

from pomstream.server.engine.jobs import VideoJob
from pomstream.server.http.bodies import openapi_body, parse_body, read_body
from pomstream.server.http.deps import Owner, RuntimeDep, SettingsDep, submit_within_limit
from pomstream.server.http.errors import ApiError
from pomstream.server.http.validation import check_prompt, check_seed, check_size, no_bool
from pomstream.server.logs import log_event
from pomstream.server.runtime import Runtime
from pomstream.server.settings import Settings
from pomstream.server.storage import MEDIA_TYPES
from pomstream.server.store import check_id, new_job_id

log = logging.getLogger("pomstream.api")

POLL_S = 0.05  # how often a waiting request looks at its images' records


class ImageRequest(BaseModel):
    """The body of ``POST /v1/images/generations``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"  # engine.jobs.IMAGE_FORMATS
    seed: int | None = None

    _no_bools = field_validator("n", "seed", mode="before")(no_bool)


def image_jobs(req: ImageRequest, rt: Runtime, settings: Settings, owner: str
               ) -> list[VideoJob]:
    """The request checked against the model and the limits: one job per image."""
    info = rt.info
    prompt = check_prompt(req.prompt, info.prompt_rules)
    if req.model is not None and req.model not in (info.name, settings.model):
        raise ApiError(400, f"unknown model {req.model!r}; this server serves {info.name!r}",
                       param="model", code="invalid_value")
    if not 1 <= req.n <= settings.max_images:
        raise ApiError(400, f"n must be between 1 and {settings.max_images}", param="n",
                       code="invalid_value")
    size = check_size(None if req.size == "auto" else req.size, info.size)
    seed = check_seed(req.seed)
    return [VideoJob(id=new_job_id("image"), prompt=prompt, frames=1,
                     seed=(seed + i) % 2**63, seconds="0", size=size, model=info.name,
                     owner=owner, image_format=req.output_format) for i in range(req.n)]


router = APIRouter(prefix="/v1")


@router.post("/images/generations", openapi_extra=openapi_body(ImageRequest))
async def generate_images(request: Request, tenant: Owner, rt: RuntimeDep,
                          settings: SettingsDep):
    req = parse_body(ImageRequest, await read_body(request))
    jobs = image_jobs(req, rt, settings, tenant.owner)
    if rt.worker is not None:  # serve: its only worker died, the images would never come
        rt.worker.check_alive()
    submitted: list[str] = []
    try:
        for job in jobs:
            await anyio.to_thread.run_sync(submit_within_limit, rt.queue, settings,
                                           tenant.owner, job.payload())
            submitted.append(job.id)
        records = await _wait(rt, submitted, settings.image_timeout_s)
    except BaseException:  # refused, timed out, failed or the client left: no leftovers
        with anyio.CancelScope(shield=True):
            for job_id in submitted:
                await anyio.to_thread.run_sync(_forget, rt, job_id)
        raise
    data = []
    for record in records:
        if req.response_format == "url":
            data.append({"url": str(request.url_for("image_content", image_id=record["id"]))})
        else:
            image = await anyio.to_thread.run_sync(_read, rt, record["id"], req.output_format)
            data.append({"b64_json": base64.b64encode(image).decode()})
    log_event(log, "images.created", jobs=submitted, format=req.output_format)
    return {"created": int(time.time()), "data": data, "output_format": req.output_format,
            "size": jobs[0].size}


@router.get("/images/{image_id}/content", name="image_content")
def image_content(image_id: str, tenant: Owner, rt: RuntimeDep):
    try:
        check_id(image_id, "image id")
    except ValueError:
        raise ApiError(400, f"invalid image id {image_id[:80]!r}", param="image_id",
                       code="invalid_value") from None
    record = rt.queue.get_job(image_id)
    if record is None or record.get("kind") != "image" or not tenant.owns(record) or \
            record.get("status") != "completed":
        raise ApiError(404, f"no image with id {image_id!r}", param="image_id",
                       code="not_found")
    fmt = record.get("image_format", "png")
    return Response(_read(rt, image_id, fmt), media_type=MEDIA_TYPES[fmt])


async def _wait(rt: Runtime, job_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """The images' records once all are completed; ApiError on a failure or timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = await anyio.to_thread.run_sync(lambda: [rt.queue.get_job(i) for i in job_ids])
        for job_id, record in zip(job_ids, records, strict=True):
            if record is None:
                raise ApiError(409, f"image {job_id} was deleted while it was made",
                               code="image_deleted")
            if record.get("status") == "failed":
                error = record.get("error") or {}
                raise ApiError(500, f"the image could not be made: {error.get('message')}",
                               type="server_error", code=error.get("code") or "image_failed")
        if all(r["status"] == "completed" for r in records):
            return records
        if time.monotonic() > deadline:
            raise ApiError(504, f"the images were not made within {timeout_s:g} s (the "
                           "workers are busy or none is running); try again later",
                           type="server_error", code="timeout")
        await anyio.sleep(POLL_S)


def _read(rt: Runtime, image_id: str, fmt: str) -> bytes:
    handle = rt.storage.open(image_id, fmt)
    if handle is None:
        raise ApiError(404, f"the file of image {image_id} is gone (expired)",
                       param="image_id", code="not_found")
    with handle:
        return handle.read()


def _forget(rt: Runtime, job_id: str) -> None:
    """An image nobody will receive: its job and files go (a running worker stops it)."""
    try:
        rt.queue.delete_job(job_id)
        rt.storage.delete(job_id)
    except Exception:  # noqa: BLE001 - best effort; the records expire anyway
        log.warning("could not delete image job %s", job_id)
