"""Operations and discovery: ``/healthz``, ``/readyz``, ``/metrics``, ``/`` (the viewer
page) and ``GET /v1/models`` (what the served model makes and which prompts it reads)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from pomstream.server.http.deps import Key, Owner, RuntimeDep
from pomstream.server.metrics import CONTENT_TYPE as METRICS_TYPE
from pomstream.server.metrics import Gauge, queue_gauges
from pomstream.server.metrics import render as render_metrics
from pomstream.server.store import WorkerRegistry

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
def readyz(rt: RuntimeDep):
    checks = {"redis": False, "model": rt.info is not None, "worker": False}
    try:
        rt.queue.ping()
        checks["redis"] = True
        if rt.worker is not None:
            checks["worker"] = rt.worker.alive
        else:
            checks["worker"] = bool(WorkerRegistry(rt.queue).alive())
    except Exception:  # noqa: BLE001 - any failure to reach Redis: not ready
        pass
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/", include_in_schema=False)
def index():
    """The viewer page (static, no secrets in it: the API key is typed into the page)."""
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, key: Key, rt: RuntimeDep):
    """Prometheus metrics (pomstream.server.metrics); guarded like the API (scrape with a
    Bearer key)."""
    lines = queue_gauges(rt.queue)
    viewers = Gauge("pomstream_live_viewers", "Open live-session WebSockets of this API.")
    viewers.set(request.app.state.live_viewers)
    lines += viewers.render()
    if rt.worker is not None:
        lines += rt.worker.metrics.render(rt.worker.active_by_kind())
    return PlainTextResponse(render_metrics(lines), media_type=METRICS_TYPE)


@router.get("/v1/models")
def list_models(owner: Owner, rt: RuntimeDep):
    """The served model, in OpenAI's list shape, with what it makes and reads."""
    info = rt.info
    return {"object": "list", "data": [{
        "id": info.name, "object": "model", "owned_by": "pomstream", "created": 0,
        "size": info.size, "fps": info.fps, "prompts": info.prompt_rules.describe()}]}
