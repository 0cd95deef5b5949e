"""Request bodies: JSON, multipart or urlencoded forms, parsed by the handlers themselves
(so one route takes all three) and described in the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from pomstream.server.http.errors import ApiError, validation_error
from pomstream.server.logs import log_event

log = logging.getLogger("pomstream.api")


async def read_body(request: Request, files: bool = False) -> dict[str, Any]:
    """The body as a dict; with ``files``, a multipart form may hold one file (bytes)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = json.loads(await _body(request))
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge ints, nesting
            raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object", code="invalid_json")
        return body
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raw = await _body(request)  # read (and bounded) first: a hang-up is one log line
        if ctype == "application/x-www-form-urlencoded":
            _check_urlencoded(raw)
        try:
            form = await request.form(max_files=1 if files else 0, max_fields=32)
            body = {}
            for key, value in form.multi_items():
                body[key] = value if isinstance(value, str) else await value.read()
        except Exception as exc:  # noqa: BLE001 - any malformed form is the client's fault
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ApiError(400, f"malformed form body: {detail}", code="invalid_form") from None
        if ctype == "multipart/form-data":
            _check_multipart_text(raw, body)
        return body
    raise ApiError(415, "send the body as application/json or multipart/form-data",
                   code="unsupported_media_type")


def _not_utf8(field: str) -> ApiError:
    return ApiError(400, f"form field {field!r} is not valid UTF-8", code="invalid_form",
                    param=field)


def _check_urlencoded(raw: bytes) -> None:
    """An urlencoded body is ASCII (other characters percent-encoded), and every name and
    value must be UTF-8 once unquoted (Starlette would put U+FFFD in place of bad bytes,
    and read raw non-ASCII bytes as Latin-1)."""
    if not raw.isascii():
        raise ApiError(400, "an urlencoded form body must percent-encode non-ASCII "
                       "characters", code="invalid_form")
    try:
        parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "the form body is not valid UTF-8", code="invalid_form") from None


def _check_multipart_text(raw: bytes, body: dict[str, Any]) -> None:
    """A text field of a multipart form must be UTF-8. Starlette decodes a field that is
    not as Latin-1 instead (mojibake), so a text value whose UTF-8 bytes do not occur in
    the body came from other bytes: refused. (ASCII reads the same either way.)"""
    for key, value in body.items():
        if isinstance(value, str) and not value.isascii() and value.encode() not in raw:
            raise _not_utf8(key)


async def _body(request: Request) -> bytes:
    """The raw body; a client that hangs up before sending it all gets one info line in
    the log (not a traceback) and a 400 it will never read."""
    timeout = request.app.state.settings.body_timeout_s
    try:
        return await asyncio.wait_for(request.body(), timeout)
    except TimeoutError:
        log_event(log, "api.body_timeout", path=request.url.path)
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s",
                       code="request_timeout") from None
    except ClientDisconnect:
        log_event(log, "api.client_disconnected", path=request.url.path)
        raise ApiError(400, "the client closed the connection before sending the whole "
                       "body", code="client_disconnected") from None


def parse_body(model: type[BaseModel], body: dict[str, Any]):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
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
