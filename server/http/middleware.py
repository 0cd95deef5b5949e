"""ASGI middleware of the API: request body limits (413), HEAD wherever GET works."""

from __future__ import annotations

from pomstream.server.http.errors import ApiError


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


class HeadAsGet:
    """ASGI middleware: answer ``HEAD`` wherever ``GET`` works (the same status and
    headers, no body), as HTTP asks; FastAPI routes declare GET only."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
