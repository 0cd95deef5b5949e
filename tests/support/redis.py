"""A private redis-server for tests: started on a free port, stopped at the end.

Tests never touch a Redis that may already run on the machine. The executable comes from
``POMSTREAM_REDIS_SERVER`` or ``redis-server`` on PATH. The fixtures built on this are in
``tests/redis_fixture.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

INSTALL_HINT = (
    "redis-server not found: install Redis 7 (Debian/Ubuntu: apt-get install redis-server; "
    "macOS: brew install redis) or set POMSTREAM_REDIS_SERVER=/path/to/redis-server"
)


def redis_executable() -> str:
    path = os.environ.get("POMSTREAM_REDIS_SERVER") or shutil.which("redis-server")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_client(port: int, **kwargs) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (tests of outages need that)."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=1,
                       retry=Retry(NoBackoff(), 0), **kwargs)


class RedisServer:
    """One redis-server process; ``stop`` and ``start`` again keep the port and the dir."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False):
        self.executable = redis_executable()
        self.workdir = workdir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--save", "", "--daemonize", "no",
                "--logfile", "redis.log",
                "--appendonly", "yes" if self.persistent else "no"]
        if self.persistent:
            args += ["--appendfsync", "always"]  # a killed server loses nothing
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        client = make_client(self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"redis-server exited with {self.process.returncode}: "
                                f"{self.log()}", pytrace=False)
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server not answering after {timeout} s: {self.log()}",
                                pytrace=False)
                time.sleep(0.02)
        finally:
            client.close()

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def stop(self, hard: bool = False) -> None:
        """Stop the server; ``hard`` kills it (SIGKILL) like a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        if hard:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
