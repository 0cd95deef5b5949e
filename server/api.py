"""The HTTP and WebSocket API: OpenAI's videos API, plus a live stream of each video.

Handlers are thin: they validate a request, call :class:`~server.queue.JobQueue` (through
a thread, as the Redis client is synchronous) or the storage, and shape the answer. Workers
do everything else (:mod:`server.engine`).

* ``POST /v1/videos`` (JSON, multipart or urlencoded form: prompt, model, seconds, size,
  plus ``seed``), ``POST /v1/videos/{id}/remix`` (same seed and length, new prompt),
  ``POST /v1/videos/extensions`` (a completed video continued from its saved state: only
  the new frames are computed), ``GET /v1/videos/{id}``, ``GET /v1/videos`` (after, limit, order),
  ``DELETE /v1/videos/{id}``, ``GET /v1/videos/{id}/content?variant=video|thumbnail|
  spritesheet``, and ``POST /v1/videos/{id}/cancel`` (not in OpenAI's API).
* ``WS /v1/videos/{id}/stream``: a JSON ``init`` message with the MIME type for
  ``MediaSource.addSourceBuffer``, the init segment (binary), then one binary fMP4 fragment
  per frame as it is made, JSON ``status``/``progress`` messages in between and a final JSON
  ``end`` message. Every viewer reads the job's frame stream from its first entry and then
  follows it live, so one who joins late or reconnects gets the same bytes from the start.
* ``WS /v1/sessions``: live sessions of unlimited length, steered by their viewer (prompt,
  pause, resume, fork, stop): :mod:`server.live_ws`, design in :mod:`server.sessions`.
* ``/``: the viewer page (``server/static/index.html``: Media Source Extensions, no build).
* ``/metrics``: Prometheus text format (:mod:`server.metrics`).
* ``/healthz`` (the process answers) and ``/readyz`` (Redis reachable, model known, a
  worker alive).

Errors always have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``:
4xx for anything wrong with a request (validation, unknown ids, auth, body size), 503 when
Redis is down, never a 5xx for bad input.

Auth: with ``api_keys`` set, every route but the health checks needs ``Authorization:
Bearer <key>``; WebSockets may also pass ``?api_key=<key>`` or offer the subprotocol
``bearer.<key>`` (browsers cannot set headers on a WebSocket). Without keys the server only
answers clients on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from pomstream.server.app import Runtime
from pomstream.server.engine.jobs import VideoJob, WorkerDead
from pomstream.server.logs import log_event
from pomstream.server.metrics import CONTENT_TYPE as METRICS_TYPE
from pomstream.server.metrics import Gauge, queue_gauges
from pomstream.server.metrics import render as render_metrics
from pomstream.server.settings import ModelInfo, Settings, is_loopback
from pomstream.server.storage import MEDIA_TYPES, VARIANTS
from pomstream.server.store import (
    EndEntry,
    EventEntry,
    FragmentEntry,
    InitEntry,
    JobNotFound,
    JobQueue,
    QueueUnavailable,
    WorkerRegistry,
    check_id,
    new_job_id,
)

log = logging.getLogger("pomstream.api")

_SECONDS_RE = re.compile(r"^\s*\d{1,6}\s*$")
_STREAM_BLOCK_MS = 1000
_FINAL = ("completed", "failed")


# --- errors -----------------------------------------------------------------------------


class ApiError(Exception):
    """A request the API refuses; rendered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return JSONResponse(self.body(), status_code=self.status,
                            headers={**headers, **self.headers})


def _not_found(video_id: str) -> ApiError:
    return ApiError(404, f"no video with id {video_id!r}", param="video_id", code="not_found")


def _unavailable() -> ApiError:
    return ApiError(503, "the job store (Redis) is unavailable; retry shortly",
                    type="server_error", code="service_unavailable")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return _validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return ApiError(exc.status_code, str(exc.detail),
                        code=codes.get(exc.status_code)).response()

    @app.exception_handler(WorkerDead)
    async def worker_dead(_request, exc: WorkerDead):
        log_event(log, "api.worker_dead", logging.ERROR, error=str(exc))
        return ApiError(503, "the video worker of this server is not running",
                        type="server_error", code="worker_unavailable").response()

    @app.exception_handler(QueueUnavailable)
    async def queue_down(_request, exc: QueueUnavailable):
        log_event(log, "api.redis_unavailable", logging.ERROR, error=str(exc))
        return _unavailable().response()


def _validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first of pydantic's errors as an OpenAI error naming the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = loc[0] if loc else None  # the field; deeper parts name union members
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return ApiError(400, message, param=param, code="invalid_value")


# --- request validation -----------------------------------------------------------------


class CreateVideoRequest(BaseModel):
    """The body of ``POST /v1/videos``; ``seconds`` may be "4" (OpenAI's type) or 4."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    seconds: int | str | None = None
    size: str | None = None
    seed: int | None = None


def build_job(req: CreateVideoRequest, info: ModelInfo, settings: Settings) -> VideoJob:
    """Check a request against the model and the limits; the job to queue."""
    prompt = _check_prompt(req.prompt, info)
    if req.model is not None and req.model not in (info.name, settings.model):
        raise ApiError(400, f"unknown model {req.model!r}; this server serves {info.name!r}",
                       param="model", code="invalid_value")
    size = info.size if req.size is None else req.size
    if size != info.size:
        raise ApiError(400, f"size {size!r} is not supported; this model makes {info.size}",
                       param="size", code="invalid_value")
    seconds = _parse_seconds(req.seconds, settings)
    seed = secrets.randbelow(2**31) if req.seed is None else req.seed
    if not 0 <= seed < 2**63:
        raise ApiError(400, "seed must be in 0..2**63-1", param="seed", code="invalid_value")
    return VideoJob(id=new_job_id("video"), prompt=prompt, frames=seconds * info.fps,
                    seed=seed, seconds=str(seconds), size=size, model=info.name)


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


def _check_prompt(prompt: str, info: ModelInfo) -> str:
    if not prompt.strip():
        raise ApiError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    size_bytes = len(prompt.encode("utf-8"))
    if size_bytes > info.max_prompt_bytes:
        raise ApiError(400, f"prompt is {size_bytes} bytes; this model reads at most "
                       f"{info.max_prompt_bytes}", param="prompt", code="prompt_too_long")
    return prompt


def remix_job(source: dict[str, Any], req: RemixRequest, info: ModelInfo) -> VideoJob:
    """A new video like ``source`` (same seed, length and size) with another prompt: the
    same noise drawn into other content."""
    _require_completed(source)
    return VideoJob(id=new_job_id("video"), prompt=_check_prompt(req.prompt, info),
                    frames=int(source["frames"]), seed=int(source["seed"]),
                    seconds=str(source["seconds"]), size=str(source["size"]),
                    model=info.name, remixed_from_video_id=source["id"])


def extension_job(source: dict[str, Any], req: ExtendRequest, info: ModelInfo,
                  settings: Settings) -> VideoJob:
    """``source``'s frames followed by ``req.seconds`` new ones, generated on from the
    state saved after its last frame (the new video's ``seconds`` is the total)."""
    _require_completed(source)
    seconds = _parse_seconds(req.seconds, settings)
    total = int(source["seconds"]) + seconds
    if total > settings.max_total_seconds:
        raise ApiError(400, f"the extended video would last {total} s; at most "
                       f"{settings.max_total_seconds} s are allowed", param="seconds",
                       code="invalid_value")
    return VideoJob(id=new_job_id("video"), prompt=_check_prompt(req.prompt, info),
                    frames=int(source["frames"]) + seconds * info.fps,
                    seed=int(source["seed"]), seconds=str(total), size=str(source["size"]),
                    model=info.name, extends=source["id"], source_frames=int(source["frames"]))


def _require_completed(source: dict[str, Any]) -> None:
    if source.get("status") != "completed":
        raise ApiError(409, f"video {source['id']} is {source.get('status')}; only a completed "
                       "video can be remixed or extended", param="video_id",
                       code="video_not_ready")


def _parse_seconds(value: int | str | None, settings: Settings) -> int:
    if value is None:
        return settings.default_seconds
    if isinstance(value, str):
        if not _SECONDS_RE.match(value):
            raise ApiError(400, f"seconds must be a whole number, got {value!r}",
                           param="seconds", code="invalid_value")
        value = int(value)
    if not 1 <= value <= settings.max_seconds:
        raise ApiError(400, f"seconds must be in 1..{settings.max_seconds}, got {value}",
                       param="seconds", code="invalid_value")
    return value


def _valid_id(video_id: str) -> str:
    try:
        return check_id(video_id, "video id")
    except ValueError:
        raise ApiError(400, f"invalid video id {video_id[:80]!r}", param="video_id",
                       code="invalid_value") from None


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


# --- auth and limits --------------------------------------------------------------------


def _key_ok(settings: Settings, key: str | None) -> bool:
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode())
                                   for k in settings.api_keys)


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _check_access(settings: Settings, client_host: str | None, key: str | None) -> None:
    if not settings.api_keys:  # the server is bound to loopback; a proxy could still forward
        if client_host is not None and not is_loopback(client_host):
            raise ApiError(403, "this server has no API keys configured and only accepts "
                           "connections from loopback", code="forbidden",
                           type="permission_error")
        return
    if key is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key", type="authentication_error")
    if not _key_ok(settings, key):
        raise ApiError(401, "invalid API key", code="invalid_api_key",
                       type="authentication_error")


def owner_of(key: str | None) -> str:
    """Whose limits a request counts against: a hash of its API key (never the key
    itself in Redis), or ``local`` for the loopback clients of a server without keys."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:32] if key else "local"


def check_rate(queue: JobQueue, settings: Settings, owner: str) -> None:
    wait = queue.hit_rate(owner, settings.rate_limit_per_minute)
    if wait:
        raise ApiError(429, f"more than {settings.rate_limit_per_minute} requests a minute "
                       f"with this API key; retry in {wait} s", code="rate_limit_exceeded",
                       type="rate_limit_error", headers={"Retry-After": str(wait)})


def claim_slot(queue: JobQueue, settings: Settings, owner: str, job_id: str,
               submitted: bool = False) -> None:
    if not queue.claim_slot(owner, job_id, settings.max_active_per_key,
                            submitted=submitted):
        raise ApiError(429, f"this API key already has {settings.max_active_per_key} videos "
                       "or live sessions queued or running; wait for one to finish",
                       code="too_many_active", type="rate_limit_error")


def submit_within_limit(queue: JobQueue, settings: Settings, owner: str,
                        payload: dict[str, Any], before=None) -> None:
    """Claim a slot of ``owner``'s running work, run ``before`` (if given), submit the
    job; the slot is released when that fails (ApiError 429 when no slot is free)."""
    job_id = payload["id"]
    claim_slot(queue, settings, owner, job_id)
    try:
        if before is not None:
            before()
        queue.submit(payload)
    except BaseException:
        with contextlib.suppress(Exception):  # the first failure is the one to report
            queue.release_slot(owner, job_id)
        raise
    queue.confirm_slot(owner, job_id)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (declared or sent);
    ``uploads`` maps paths that take a file to their own, larger limit."""

    def __init__(self, app, limit: int, uploads: dict[str, int] | None = None):
        self.app, self.default, self.uploads = app, limit, uploads or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads.get(scope.get("path", ""), self.default)
        too_large = ApiError(413, f"request body is larger than {limit} bytes",
                             code="request_too_large")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await too_large.response()(scope, receive, send)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await too_large.response()(scope, receive, send)


# --- the app ----------------------------------------------------------------------------


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """The API. ``runtime`` (server.app.Runtime) carries the queue, storage, model info and
    an optional in-process worker; without one, it is built from ``settings`` at startup
    (API only, no worker). Either way the app's shutdown closes it (stops the worker
    gracefully) while the server still runs, before uvicorn re-raises a SIGTERM."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rt = runtime or await anyio.to_thread.run_sync(Runtime.build, settings, False)
        app.state.runtime = rt
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(rt.close)

    app = FastAPI(title="pomstream", version="0.1.0", lifespan=lifespan,
                  description="Streaming video generation with the Polynomial Mixer")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       uploads={"/v1/videos/extensions": settings.max_upload_bytes})
    _install_error_handlers(app)
    app.state.settings = settings
    app.state.ws_limiter = anyio.CapacityLimiter(256)  # blocking stream reads, apart
    app.state.live_viewers = 0  # open WS /v1/sessions connections (server.live_ws)
    app.include_router(_health_router())
    app.include_router(_page_router())
    app.include_router(_metrics_router(settings))
    app.include_router(_videos_router(settings))
    app.include_router(_stream_router(settings))
    from pomstream.server.live_ws import live_router  # it builds on this module's helpers

    app.include_router(live_router(settings))
    return app


def _rt(request: Request | WebSocket):
    return request.app.state.runtime


def _health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz(request: Request):
        rt = _rt(request)
        checks = {"redis": False, "model": rt.info is not None, "worker": False}
        try:
            rt.queue.ping()
            checks["redis"] = True
            if rt.worker is not None:
                checks["worker"] = rt.worker.alive
            else:
                max_age = 3 * rt.queue.heartbeat_interval_s + 5
                checks["worker"] = bool(WorkerRegistry(rt.queue).alive(max_age))
        except Exception:  # noqa: BLE001 - any failure to reach Redis: not ready
            pass
        ready = all(checks.values())
        return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                            status_code=200 if ready else 503)

    return router


STATIC = Path(__file__).resolve().parent / "static"


def _page_router() -> APIRouter:
    """The viewer page (static, no secrets in it: the API key is typed into the page)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    return router


def _authorizer(settings: Settings, limited: bool = False):
    """Dependency: check the API key; with ``limited``, also count the request against
    the key's rate limit and remember its owner (``request.state.owner``)."""
    def authorize(request: Request) -> None:
        client = request.client.host if request.client else None
        key = _bearer(request.headers.get("authorization"))
        _check_access(settings, client, key)
        if limited:
            request.state.owner = owner_of(key)
            check_rate(_rt(request).queue, settings, request.state.owner)

    return authorize


def _metrics_router(settings: Settings) -> APIRouter:
    """Prometheus metrics (server.metrics); guarded like the API (scrape with a Bearer key)."""
    router = APIRouter(dependencies=[Depends(_authorizer(settings))])

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request):
        rt = _rt(request)
        lines = queue_gauges(rt.queue)
        viewers = Gauge("pomstream_live_viewers", "Open live-session WebSockets of this API.")
        viewers.set(request.app.state.live_viewers)
        lines += viewers.render()
        if rt.worker is not None:
            lines += rt.worker.metrics.render(rt.worker.active_by_kind())
        return PlainTextResponse(render_metrics(lines), media_type=METRICS_TYPE)

    return router


def _videos_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_authorizer(settings, True))])

    async def submit(request: Request, job: VideoJob) -> dict[str, Any]:
        rt = _rt(request)
        if rt.worker is not None:  # serve: its only worker died, a job would wait forever
            rt.worker.check_alive()
        await anyio.to_thread.run_sync(submit_within_limit, rt.queue, settings,
                                       request.state.owner, job.payload())
        record = await anyio.to_thread.run_sync(rt.queue.get_job, job.id)
        log_event(log, "video.created", job_id=job.id, frames=job.frames,
                  remixed_from=job.remixed_from_video_id, extends=job.extends)
        return video_object(record or {**job.payload(), "status": "queued"})

    @router.post("/videos", openapi_extra=_openapi_body(CreateVideoRequest))
    async def create_video(request: Request):
        req = _parse_body(CreateVideoRequest, await _read_body(request))
        return await submit(request, build_job(req, _rt(request).info, settings))

    @router.post("/videos/extensions", openapi_extra=_openapi_body(ExtendRequest))
    async def extend_video(request: Request):
        body = await _read_body(request, files=True)
        if "video[id]" in body:  # a form flattens the object
            body["video"] = {"id": body.pop("video[id]")}
        elif isinstance(body.get("video"), bytes):  # the file itself
            body["video"] = {"id": await _video_of_file(request, body["video"])}
        req = _parse_body(ExtendRequest, body)
        source = await anyio.to_thread.run_sync(_get_record, request, req.video.id)
        job = extension_job(source, req, _rt(request).info, settings)
        snap = await anyio.to_thread.run_sync(_rt(request).queue.load_snapshot, source["id"])
        if snap is None or snap.frame_index != job.source_frames:
            raise ApiError(409, f"the saved state of video {source['id']} is gone (expired); "
                           "it can no longer be extended", param="video",
                           code="video_expired")
        return await submit(request, job)

    @router.post("/videos/{video_id}/remix", openapi_extra=_openapi_body(RemixRequest))
    async def remix_video(request: Request, video_id: str):
        req = _parse_body(RemixRequest, await _read_body(request))
        source = await anyio.to_thread.run_sync(_get_record, request, video_id)
        return await submit(request, remix_job(source, req, _rt(request).info))

    @router.get("/videos")
    def list_videos(request: Request, after: str | None = None,
                    limit: int = Query(20, ge=1, le=100),
                    order: Literal["asc", "desc"] = "desc"):
        if after is not None:
            _valid_id(after)
        try:
            page = _rt(request).queue.list_jobs(after=after, limit=limit, order=order)
        except JobNotFound:
            raise ApiError(404, f"no video with id {after!r} (after)", param="after",
                           code="not_found") from None
        data = [video_object(r) for r in page.jobs if r.get("kind", "video") == "video"]
        return {"object": "list", "data": data, "first_id": page.first_id,
                "last_id": page.last_id, "has_more": page.has_more}

    @router.get("/videos/{video_id}")
    def retrieve_video(request: Request, video_id: str):
        record = _get_record(request, video_id)
        headers = {} if record["status"] in _FINAL else {"openai-poll-after-ms": "200"}
        return JSONResponse(video_object(record), headers=headers)

    @router.delete("/videos/{video_id}")
    def delete_video(request: Request, video_id: str):
        _get_record(request, video_id)
        rt = _rt(request)
        rt.queue.delete_job(video_id)  # a running worker sees it and stops
        rt.storage.delete(video_id)
        log_event(log, "video.deleted", job_id=video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @router.post("/videos/{video_id}/cancel")
    def cancel_video(request: Request, video_id: str):
        record = _get_record(request, video_id)
        if record["status"] in _FINAL:
            raise ApiError(409, f"video {video_id} is already {record['status']}",
                           param="video_id", code="invalid_state")
        _rt(request).queue.cancel(video_id)
        return video_object(record)

    @router.get("/videos/{video_id}/content")
    def download(request: Request, video_id: str, variant: str = "video"):
        if variant not in VARIANTS:
            raise ApiError(400, f"variant must be one of {sorted(VARIANTS)}", param="variant",
                           code="invalid_value")
        record = _get_record(request, video_id)
        if record["status"] != "completed":
            raise ApiError(409, f"video {video_id} is {record['status']}, not completed",
                           param="video_id", code="video_not_ready")
        handle = _rt(request).storage.open(video_id, variant)
        if handle is None:
            raise ApiError(404, f"the {variant} of video {video_id} is gone (expired)",
                           param="video_id", code="not_found")
        size = os.fstat(handle.fileno()).st_size if hasattr(handle, "fileno") else None
        headers = {"Content-Length": str(size)} if size is not None else None
        return StreamingResponse(_chunks(handle), media_type=MEDIA_TYPES[variant],
                                 headers=headers)

    return router


def _stream_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1")  # auth is checked in the handler, before accepting

    @router.websocket("/videos/{video_id}/stream")
    async def stream(ws: WebSocket, video_id: str):
        await _stream_video(ws, video_id, settings)

    return router


def _get_record(request: Request, video_id: str) -> dict[str, Any]:
    record = _rt(request).queue.get_job(_valid_id(video_id))
    if record is None or record.get("kind", "video") != "video":
        raise _not_found(video_id)
    return record


def _chunks(handle, size: int = 64 * 1024) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(size):
            yield chunk


async def _video_of_file(request: Request, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    video_id = await anyio.to_thread.run_sync(_rt(request).queue.find_by_content, sha)
    if video_id is None:
        raise ApiError(400, "the uploaded file is none of this server's videos (or it "
                       "expired); only videos made here can be extended: send the file as "
                       "downloaded, or the video's id as video[id]", param="video",
                       code="unknown_video_file")
    return video_id


async def _read_body(request: Request, files: bool = False) -> dict[str, Any]:
    """The body as a dict; with ``files``, a multipart form may hold one file (bytes)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object", code="invalid_json")
        return body
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=1 if files else 0, max_fields=32)
            body = {}
            for key, value in form.multi_items():
                body[key] = value if isinstance(value, str) else await value.read()
        except Exception as exc:  # noqa: BLE001 - any malformed form is the client's fault
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ApiError(400, f"malformed form body: {detail}", code="invalid_form") from None
        return body
    raise ApiError(415, "send the body as application/json or multipart/form-data",
                   code="unsupported_media_type")


def _parse_body(model: type[BaseModel], body: dict[str, Any]):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The request body in the OpenAPI document (the handlers parse it themselves, to
    accept JSON and forms alike)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):  # nested models inline: no $ref into a document that lacks them
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(schema)
    return {"requestBody": {"required": True, "content": {
        media: {"schema": schema} for media in ("application/json", "multipart/form-data")}}}


# --- the live stream --------------------------------------------------------------------


async def _deny(ws: WebSocket, error: ApiError) -> None:
    """Refuse a WebSocket handshake with an HTTP error (or close code 1008 if the server
    cannot send an HTTP response on a WebSocket request)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error.response())
    else:
        await ws.close(code=1008, reason=error.message[:120])


def _ws_key(ws: WebSocket) -> tuple[str | None, str | None]:
    """(key, subprotocol to answer with) from the header, the query or a subprotocol."""
    key = _bearer(ws.headers.get("authorization")) or ws.query_params.get("api_key")
    offered = ws.scope.get("subprotocols") or []
    for proto in offered:
        if key is None and proto.startswith("bearer."):
            key = proto[len("bearer."):]
    return key, ("pomstream" if "pomstream" in offered else None)


async def _stream_video(ws: WebSocket, video_id: str, settings: Settings) -> None:
    key, subprotocol = _ws_key(ws)
    rt = _rt(ws)
    try:
        _check_access(settings, ws.client.host if ws.client else None, key)
        await anyio.to_thread.run_sync(check_rate, rt.queue, settings, owner_of(key))
        _valid_id(video_id)
        record = await anyio.to_thread.run_sync(rt.queue.get_job, video_id)
        if record is None or record.get("kind", "video") != "video":
            raise _not_found(video_id)
    except ApiError as exc:
        return await _deny(ws, exc)
    except QueueUnavailable:
        return await _deny(ws, _unavailable())
    await ws.accept(subprotocol=subprotocol)
    # A receive task notices a viewer that went away while the job is still queued.
    gone = asyncio.ensure_future(_until_disconnect(ws))
    try:
        await ws.send_json({"type": "status", "status": record["status"], "id": video_id})
        await _follow(ws, rt.queue, video_id, gone, ws.app.state.ws_limiter)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the viewer left mid-send
    except QueueUnavailable:
        await _close(ws, 1011, "job store unavailable")
    finally:
        gone.cancel()


async def _until_disconnect(ws: WebSocket) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _follow(ws: WebSocket, queue: JobQueue, video_id: str, gone: asyncio.Future,
                  limiter: anyio.CapacityLimiter) -> None:
    """Replay the job's frame stream from the start, then follow it until its end."""
    cursor, fragments = "0-0", 0
    while not gone.done():
        read = functools.partial(queue.read_fragments, video_id, after=cursor,
                                 block_ms=_STREAM_BLOCK_MS, count=64)
        entries = await anyio.to_thread.run_sync(read, limiter=limiter)
        if not entries:
            if await anyio.to_thread.run_sync(queue.get_job, video_id) is None:
                await ws.send_json({"type": "end", "status": "deleted", "error": None,
                                    "frames": fragments})
                return await _close(ws, 1000, "deleted")
            continue
        for entry in entries:
            if isinstance(entry, InitEntry):
                await ws.send_json({"type": "init", "mime": entry.mime, "id": video_id})
                await ws.send_bytes(entry.data)
            elif isinstance(entry, FragmentEntry):
                fragments += 1
                await ws.send_bytes(entry.data)
            elif isinstance(entry, EventEntry):
                await ws.send_json(entry.event)
            elif isinstance(entry, EndEntry):
                await ws.send_json({"type": "end", "status": entry.status,
                                    "error": entry.error, "frames": fragments})
                return await _close(ws, 1000, entry.status)
        cursor = entries[-1].entry_id


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code=code, reason=reason)
    except RuntimeError:
        pass  # already closed by the viewer
