"""Bounded storage per key (issue 12): forks take a slot of their key's running work and
are refused past the limit; detached sessions expire after ``detached_ttl_s``; a
WebSocket's control messages are rate-limited per connection."""

from __future__ import annotations

import json
import time

import pytest

from pomstream.server.store import JobQueue
from tests.server.http.test_live import Live
from tests.support.redis import free_port
from tests.support.servers import ServerProcess, wait_for

PREFIX = "bounds"


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    proc = ServerProcess("serve", tmp_path_factory.mktemp("bounds"), tiny_model_file,
                         redis_url=redis_server.url, port=free_port(),
                         extra=["--prefix", PREFIX],
                         env={"POMSTREAM_MAX_ACTIVE_PER_KEY": "2",
                              "POMSTREAM_DETACHED_TTL_S": "120",
                              "POMSTREAM_WS_MESSAGES_PER_SECOND": "5"})
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def test_forks_are_bounded_by_the_keys_limit(server, redis_server):
    queue = JobQueue.from_url(redis_server.url, prefix=PREFIX)
    live = Live(server)
    live.send(type="start", prompt="digit 1", seed=1)
    sid = live.until("session")["session_id"]
    live.collect(2)
    live.send(type="fork")
    fork = live.until("forked")["fork_id"]  # slot 2 of 2
    # detached and expiring in one step: no moment shows a detached fork without an expiry
    wait_for(lambda: (queue.get_job(fork) or {}).get("state") == "detached", 30,
             what="the fork to settle detached")
    ttl = queue.redis.ttl(queue.keys.job(fork))
    assert 0 < ttl <= 120  # a detached session lives detached_ttl_s, not a video's day
    time.sleep(0.6)  # the control-rate window of the fork message is over
    live.send(type="fork")
    error = live.until("error")
    assert error["code"] == "too_many_active" and "fork" in error["message"]
    assert queue.get_job(sid)["state"] == "live"  # the session itself goes on
    live.collect(2)
    live.send(type="stop")
    live.until("end")
    live.close()


def test_control_messages_are_rate_limited_per_connection(server):
    live = Live(server)
    live.send(type="start", prompt="digit 2", seed=2)
    live.until("session")
    for _ in range(12):  # 5 a second allowed
        live.ws.send(json.dumps({"type": "ack", "frame": -1}))
    error = live.until("error")
    assert error["code"] == "rate_limited"
    time.sleep(1.1)  # dropped messages do not count: the window is free again
    live.send(type="stop")  # the connection is kept, and works again after the second
    assert live.until("stopping")["type"] == "stopping"
    live.close()


def test_the_opening_of_a_connection_is_rate_limited_too(server):
    live = Live(server)
    for _ in range(12):  # failing resumes, each a Redis read: 5 a second allowed
        live.send(type="resume", session_id="sess_nope")
    codes = [live.until("error")["code"] for _ in range(12)]
    assert codes.count("not_found") == 5 and codes.count("rate_limited") == 7
    live.close()
