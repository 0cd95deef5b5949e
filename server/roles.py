"""Process roles and their wiring: ``serve`` (API + worker), ``api``, ``worker``.

Each role builds a :class:`~pomstream.server.runtime.Runtime` (store, storage, model info,
and for ``serve`` the worker); ``pomstream api`` never imports the engine or torch (a test
checks it).

Shutdown: uvicorn turns SIGINT/SIGTERM into a graceful stop whose lifespan exit stops the
worker (no new jobs, snapshot, release); ``pomstream worker`` does the same itself.

Logs are JSON lines on stderr (:mod:`pomstream.server.logs`).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from pomstream.server.logs import log_event
from pomstream.server.metrics import CONTENT_TYPE as METRICS_TYPE
from pomstream.server.metrics import render as render_metrics
from pomstream.server.runtime import Runtime, make_queue
from pomstream.server.settings import Settings, SettingsError
from pomstream.server.storage import LocalStorage

if TYPE_CHECKING:
    from pomstream.server.engine.worker import Worker

log = logging.getLogger("pomstream.roles")


def run_server(settings: Settings, with_worker: bool) -> int:
    """``serve`` (with_worker) or ``api``: uvicorn in this thread until SIGINT/SIGTERM."""
    import uvicorn

    from pomstream.server.http.app import create_app
    from pomstream.server.http.protocol import header_timeout_protocol

    settings.check_exposure()
    if not with_worker and not settings.redis_url:
        raise SettingsError("pomstream api needs POMSTREAM_REDIS_URL (--redis-url): "
                            "its workers run in other processes")
    runtime = Runtime.build(settings, with_worker)
    app = create_app(settings, runtime)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            ws="websockets-sansio", lifespan="on", timeout_graceful_shutdown=10,
                            http=header_timeout_protocol(settings.header_timeout_s),
                            limit_concurrency=settings.max_connections,
                            timeout_keep_alive=settings.keep_alive_s)
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
    from pomstream.server.engine.build import build_worker

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
