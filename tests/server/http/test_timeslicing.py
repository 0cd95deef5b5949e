"""More live sessions than batch slots (issue 12): a worker with one slot runs two
sessions in turns, each hears its frame rate (``status``), and a third that could not get
the minimum frame rate is refused with ``server_busy`` until one of them stops."""

from __future__ import annotations

import time

import pytest

from tests.server.http.test_live import Live
from tests.support.redis import free_port
from tests.support.servers import ServerProcess


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    proc = ServerProcess("serve", tmp_path_factory.mktemp("slicing"), tiny_model_file,
                         redis_url=redis_server.url, port=free_port(),
                         extra=["--prefix", "slicing"],
                         env={"POMSTREAM_MAX_SESSIONS": "1", "POMSTREAM_MAX_HELD": "2",
                              "POMSTREAM_MIN_SESSION_FPS": "0"})
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def rate_status(live: Live, timeout: float = 30.0) -> dict:
    """The next periodic status (the one with a frame rate), frames read meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = live.until("status", max(0.1, deadline - time.monotonic()))
        if "fps" in body:
            return body
    raise AssertionError("no status with a frame rate")


@pytest.mark.slow
def test_two_sessions_share_one_slot_and_a_third_waits_for_room(server):
    a, b = Live(server), Live(server)
    a.send(type="start", prompt="digit 1", seed=1)
    a.until("session")
    b.send(type="start", prompt="digit 2", seed=2)
    b.until("session")
    a.collect(5)
    b.collect(5)  # both make frames through one slot
    status = rate_status(a)
    assert status["status"] == "live" and status["slots"] == 1 and status["held"] == 2
    assert status["fps"] > 0 and status["frame"] >= 5

    c = Live(server)
    c.send(type="start", prompt="digit 3", seed=3)
    error = c.until("error")
    assert error["code"] == "server_busy" and error["retry_after"] == 5

    a.send(type="stop")
    a.until("end")
    deadline = time.monotonic() + 30
    while True:  # the connection stayed open: try again once the worker has room
        c.send(type="start", prompt="digit 3", seed=3)
        body = c.recv()
        while body["type"] not in ("session", "error"):
            body = c.recv()
        if body["type"] == "session":
            break
        assert body["code"] == "server_busy" and time.monotonic() < deadline
        time.sleep(0.5)
    c.collect(3)
    b.collect(3)  # b goes on beside it
    for live in (b, c):
        live.send(type="stop")
        live.until("end")
        live.close()
    a.close()


def test_a_waiting_session_hears_its_place_and_a_full_cluster_refuses(redis_server,
                                                                     tmp_path):
    """The API alone (no worker takes anything): a started session is told how many jobs
    wait before it; once the only live worker reports no room, the next start is refused."""
    from pomstream.server.store import JobQueue, WorkerRegistry
    from tests.support.servers import api_only_server

    queue = JobQueue.from_url(redis_server.url, prefix="queued")
    with api_only_server(tmp_path, redis_url=redis_server.url,
                         redis_prefix="queued") as srv:
        first, second = Live(srv), Live(srv)
        for live, digit in ((first, 4), (second, 5)):
            live.send(type="start", prompt=f"digit {digit}", seed=digit)
            assert live.until("session")["status"] == "queued"
        assert first.until("status") == {"type": "status", "status": "queued", "ahead": 0,
                                         "session_id": first.texts[0]["session_id"]}
        assert second.until("status")["ahead"] == 1
        WorkerRegistry(queue).beat("w-full", 1)  # room for one, and two already wait
        third = Live(srv)
        third.send(type="start", prompt="digit 6", seed=6)
        assert third.until("error")["code"] == "server_busy"
        WorkerRegistry(queue).beat("w-full", 3)
        third.send(type="start", prompt="digit 6", seed=6)
        assert third.until("session")["status"] == "queued"
        for live in (first, second, third):
            live.close()
