"""The API application: routers, middleware, error handlers and the process runtime."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from pomstream.server.http import images, live, ops, stream, videos
from pomstream.server.http.errors import install_error_handlers
from pomstream.server.http.middleware import BodyLimit, HeadAsGet
from pomstream.server.runtime import Runtime
from pomstream.server.settings import Settings


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """The API. ``runtime`` carries the queue, storage, model info and an optional
    in-process worker; without one, it is built from ``settings`` at startup (API only,
    no worker). Either way the app's shutdown closes it (stops the worker gracefully)
    while the server still runs, before uvicorn re-raises a SIGTERM."""
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
    app.add_middleware(HeadAsGet)
    install_error_handlers(app)
    app.state.settings = settings
    app.state.ws_limiter = anyio.CapacityLimiter(256)  # blocking stream reads, apart
    app.state.live_viewers = 0  # open WS /v1/sessions connections (live.py)
    app.state.sessions = None  # the SessionStore, made on first use (live.py)
    for module in (ops, videos, images, stream, live):
        app.include_router(module.router)
    return app
