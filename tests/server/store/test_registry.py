"""Workers' spare room in the registry and a job's place in the queue, against a real
redis-server: what the API reads to refuse a live session (``server_busy``) and to tell
a waiting one how many jobs are before it."""

import pytest

from pomstream.server.store import JobQueue, WorkerRegistry


@pytest.fixture
def q(redis_client) -> JobQueue:
    queue = JobQueue(redis_client, prefix="reg", claim_idle_ms=3000)
    queue.ensure_group()
    return queue


def test_spare_room_is_summed_over_live_workers_that_report_it(q):
    registry = WorkerRegistry(q)
    assert registry.spare(60) is None  # no worker: nothing known
    registry.beat("w1")
    assert registry.spare(60) is None  # alive, but it reported no room
    registry.beat("w1", 3)
    registry.beat("w2", 2)
    registry.beat("w3", -4)  # more held than its room now: counts as none
    assert registry.spare(60) == 5
    registry.remove("w2")
    assert registry.spare(60) == 3 and registry.alive(60) == ["w1", "w3"]
    q.redis.zadd(q.keys.workers, {"w1": 0.0})  # w1's last beat is long ago: not alive
    assert registry.spare(60) == 0


def test_waiting_ahead_counts_the_jobs_no_worker_took_yet(q):
    for i in range(4):
        q.submit({"id": f"j{i}", "prompt": "p", "frames": 8})
    assert [q.waiting_ahead(f"j{i}") for i in range(4)] == [0, 1, 2, 3]
    taken = q.take("w", count=2, block_ms=None)
    assert [lease.job_id for lease in taken] == ["j0", "j1"]
    assert q.waiting_ahead("j0") is None  # taken: not waiting
    assert q.waiting_ahead("j3") == 1
    assert q.waiting_ahead("j3", limit=1) is None  # beyond the look-ahead
    assert q.waiting_ahead("nope") is None
