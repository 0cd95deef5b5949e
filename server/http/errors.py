"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

4xx for anything wrong with a request (validation, unknown ids, auth, body size), 503 when
Redis or the worker is down, never a 5xx for bad input.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pomstream.server.engine.jobs import WorkerDead
from pomstream.server.http.validation import Invalid
from pomstream.server.logs import log_event
from pomstream.server.store import QueueUnavailable

log = logging.getLogger("pomstream.api")


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


def not_found(video_id: str) -> ApiError:
    return ApiError(404, f"no video with id {video_id!r}", param="video_id", code="not_found")


def unavailable() -> ApiError:
    return ApiError(503, "the job store (Redis) is unavailable; retry shortly",
                    type="server_error", code="service_unavailable")


def invalid(exc: Invalid) -> ApiError:
    """A value refused by :mod:`.validation`, as a 400 (the HTTP API's codes)."""
    code = exc.code if exc.code in ("prompt_too_long", "prompt_not_understood") else \
        "invalid_value"
    return ApiError(400, exc.message, param=exc.param, code=code)


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first of pydantic's errors as an OpenAI error naming the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = loc[0] if loc else None  # the field; deeper parts name union members
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return ApiError(400, message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return exc.response()

    @app.exception_handler(Invalid)
    async def invalid_value(_request, exc: Invalid):
        return invalid(exc).response()

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_request, exc: RequestValidationError):
        return validation_error(exc.errors()).response()

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
        return unavailable().response()
