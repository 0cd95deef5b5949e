"""Process roles and their wiring: ``serve`` (API + worker), ``api``, ``worker``.

A :class:`Runtime` is what one process holds: the :class:`~server.queue.JobQueue`, the
storage, what the served model can make (:class:`~server.settings.ModelInfo`) and, for
``serve`` and ``worker``, a :class:`~server.engine.Worker` with the loaded model.

With ``redis_url`` unset, the queue runs on fakeredis in this process (``serve`` only: an
API and a worker in different processes cannot share it). It is the same
:class:`~server.queue.JobQueue` code, Lua scripts included, that production runs against
Redis, so the tests against a real redis-server exercise the production path.

Shutdown: uvicorn turns SIGINT/SIGTERM into a graceful stop whose lifespan exit stops the
worker (no new jobs, snapshot, release); ``pomstream worker`` does the same itself.

Logs are JSON lines on stderr (:class:`JsonFormatter`); ``log_event`` fields become keys.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pomstream.server.engine.worker import Worker
from pomstream.server.logs import log_event
from pomstream.server.metrics import CONTENT_TYPE as METRICS_TYPE
from pomstream.server.metrics import render as render_metrics
from pomstream.server.settings import ModelInfo, Settings, SettingsError, model_info
from pomstream.server.storage import LocalStorage
from pomstream.server.store import JobQueue

log = logging.getLogger("pomstream.app")


def make_queue(settings: Settings) -> JobQueue:
    if settings.redis_url:
        return JobQueue.from_url(settings.redis_url, prefix=settings.redis_prefix,
                                 claim_idle_ms=settings.claim_idle_ms)
    import fakeredis

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return JobQueue(client, prefix=settings.redis_prefix, claim_idle_ms=settings.claim_idle_ms)


def build_worker(settings: Settings, queue: JobQueue, storage: LocalStorage) -> Worker:
    import torch

    from pomstream.model import StreamGenerator, load_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(settings.device).type == "cuda" else "float32"
    model = load_model(settings.model, device=settings.device, dtype=getattr(torch, dtype))
    generator = StreamGenerator(model, graphs=settings.cuda_graphs and model.pos.is_cuda)
    return Worker(queue, generator, storage, worker_id=settings.worker_id,
                  max_sessions=settings.max_sessions, snapshot_every=settings.snapshot_every,
                  qp=settings.encoder_qp, encode_threads=settings.encode_threads,
                  video_ttl_s=settings.video_ttl_s, params=settings.generation_params(),
                  session_window=settings.session_window,
                  viewer_timeout_s=settings.viewer_timeout_s)


@dataclass
class Runtime:
    settings: Settings
    queue: JobQueue
    storage: LocalStorage
    info: ModelInfo
    worker: Worker | None = None

    @classmethod
    def build(cls, settings: Settings, with_worker: bool) -> Runtime:
        queue = make_queue(settings)
        storage = LocalStorage(settings.storage_dir)
        info = model_info(settings.model)
        worker = build_worker(settings, queue, storage).start() if with_worker else None
        return cls(settings, queue, storage, info, worker)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def run_server(settings: Settings, with_worker: bool) -> int:
    """``serve`` (with_worker) or ``api``: uvicorn in this thread until SIGINT/SIGTERM."""
    import uvicorn

    from pomstream.server.api import create_app

    settings.check_exposure()
    if not with_worker and not settings.redis_url:
        raise SettingsError("pomstream api needs POMSTREAM_REDIS_URL (--redis-url): "
                            "its workers run in other processes")
    runtime = Runtime.build(settings, with_worker)
    app = create_app(settings, runtime)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            ws="websockets-sansio", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    backend = settings.redis_url or "in-process (fakeredis)"
    print(f"pomstream: serving on http://{host}:{settings.port} "
          f"(model {runtime.info.name}, queue {backend})", flush=True)
    # uvicorn re-raises SIGTERM after its graceful shutdown (which already stopped the
    # worker, in the app's lifespan); a no-op handler makes that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        runtime.close()  # idempotent; covers a failed startup
    return 0


def run_worker(settings: Settings) -> int:
    """``worker``: run jobs until SIGINT/SIGTERM, then stop gracefully."""
    if not settings.redis_url:
        raise SettingsError("pomstream worker needs POMSTREAM_REDIS_URL (--redis-url)")
    queue = make_queue(settings)
    worker = build_worker(settings, queue, LocalStorage(settings.storage_dir))
    metrics = None
    if settings.metrics_port is not None:  # bind before taking jobs: a busy port stops here
        metrics = serve_worker_metrics(worker, settings.host, settings.metrics_port)
        print(f"pomstream: worker metrics on http://{settings.host}:"
              f"{metrics.server_address[1]}/metrics", flush=True)
    worker.start()
    stop = threading.Event()

    def on_signal(signum, _frame):
        log_event(log, "worker.signal", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"pomstream: worker {worker.id} on {settings.redis_url}", flush=True)
    while not stop.is_set() and worker.alive:
        time.sleep(0.2)
    worker.stop()
    if metrics is not None:
        metrics.shutdown()
    return 1 if worker.crashed else 0


def serve_worker_metrics(worker: Worker, host: str, port: int) -> ThreadingHTTPServer:
    """Prometheus text at ``/metrics`` of a standalone worker (a thread; no auth: bind it
    to an address only the scraper reaches, as the compose file does)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render_metrics(worker.metrics.render(worker.active_by_kind())).encode()
            self.send_response(200)
            self.send_header("Content-Type", METRICS_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes are not worth a log line each
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
