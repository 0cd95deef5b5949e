"""Helpers for the server tests: server processes, clients, decoding.

Every server runs the tiny model (the ``tiny_model_file`` fixture, tests/conftest.py) with
one torch thread and two sampling steps, so a frame costs milliseconds even on a loaded
machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import httpx
import numpy as np
from websockets.sync.client import connect

from tests.support.redis import free_port

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2
SNAPSHOT_EVERY = 4


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, every: float = 0.05,
             what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ServerProcess:
    """``python -m pomstream <role> ...`` in a subprocess, its output in a log file."""

    def __init__(self, role: str, workdir: Path, model: Path, *, redis_url: str | None = None,
                 port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.role, self.port = role, port
        self.log_path = workdir / f"{role}-{port or os.getpid()}-{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "pomstream", role, "--model", str(model),
                "--steps", str(STEPS), "--snapshot-every", str(SNAPSHOT_EVERY),
                "--storage-dir", str(workdir / "videos"), "--threads", "1"]
        if redis_url:
            args += ["--redis-url", redis_url]
        if port is not None:
            args += ["--port", str(port)]
        self.args = args + (extra or [])
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                    **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60.0, path: str = "/readyz") -> ServerProcess:
        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.role} exited {self.process.returncode}:\n"
                                     f"{self.log()}")
            try:
                return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, 0.1, f"{self.role} to be ready")
        return self

    def wait_log(self, text: str, timeout: float = 60.0) -> ServerProcess:
        def seen():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.role} exited {self.process.returncode}:\n"
                                     f"{self.log()}")
            return text in self.log()

        wait_for(seen, timeout, 0.1, f"{text!r} in the {self.role} log")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: a graceful stop."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class ThreadServer:
    """A uvicorn server for an ASGI app in a thread of the test process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                ws="websockets-sansio", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, what="uvicorn to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def decode(data: bytes) -> np.ndarray:
    """Every frame of an MP4 (fragmented or not), uint8 RGB (F, H, W, 3)."""
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def ws_url(base: str, video_id: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + f"/v1/videos/{video_id}/stream{query}"


def ws_collect(url: str, timeout: float = 60.0, **kwargs) -> tuple[list[dict], list[bytes]]:
    """Read a video's stream to its end: (JSON messages, binary messages)."""
    texts, blobs = [], []
    with connect(url, open_timeout=10, **kwargs) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(message, bytes):
                blobs.append(message)
                continue
            texts.append(json.loads(message))
            if texts[-1]["type"] == "end":
                return texts, blobs
    raise AssertionError(f"stream did not end within {timeout} s; got {texts[-3:]}")


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def shared_server(redis_server, model_file: Path, tmp_path_factory, prefix: str, *extra: str):
    """A `pomstream serve` on the test Redis under its own key prefix, for a module fixture
    (yield from it); it must shut down cleanly."""
    proc = ServerProcess("serve", tmp_path_factory.mktemp(prefix), model_file,
                         redis_url=redis_server.url, port=free_port(),
                         extra=["--prefix", prefix, *extra])
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


@contextlib.contextmanager
def api_only_server(storage_dir: Path, clock=None, **settings_fields) -> Iterator[ThreadServer]:
    """The API without a worker, in a thread (videos stay queued); its queue is on the
    Redis that ``redis_url`` names, or in-process without one; ``clock`` replaces the
    store's (limits and rate windows)."""
    from pomstream.server.http.app import create_app
    from pomstream.server.runtime import Runtime, make_queue
    from pomstream.server.settings import Settings, model_info
    from pomstream.server.storage import LocalStorage

    settings = Settings(storage_dir=storage_dir, **settings_fields)
    runtime = Runtime(settings, make_queue(settings), LocalStorage(storage_dir),
                      model_info(settings.model))
    if clock is not None:
        runtime.queue.clock = clock
    with ThreadServer(create_app(settings, runtime)) as srv:
        yield srv
