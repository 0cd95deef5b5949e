"""The per-key cap on kept snapshots, against a real redis-server: a key's finished jobs
lose their snapshots oldest first; running ones never do."""

import pytest

from pomstream.server.store import JobQueue


@pytest.fixture
def q(redis_client) -> JobQueue:
    queue = JobQueue(redis_client, prefix="snaps", claim_idle_ms=3000)
    queue.ensure_group()
    return queue


def job(q, job_id, owner="k1", kind="video", status=None, snap=100):
    q.submit({"id": job_id, "prompt": "p", "frames": 8, "owner": owner, "kind": kind})
    q.save_snapshot(job_id, b"x" * snap, 8)
    if status:
        q.finish_job(job_id, status)


def test_the_oldest_finished_snapshots_go_first(q):
    job(q, "v1", status="completed")
    job(q, "s1", kind="session", status="completed")  # a stopped session
    job(q, "v2")  # still running: its snapshot is how it resumes
    job(q, "v3", status="failed")
    job(q, "v4", status="completed")
    job(q, "other", owner="k2", status="completed", snap=10_000)  # another key's
    assert q.trim_snapshots("k1", 500) == []  # 5 x 100 bytes fit
    assert q.trim_snapshots("k1", 250) == ["v1", "s1", "v3"]  # v2 runs: skipped
    assert [q.load_snapshot(i) is not None for i in ("v1", "s1", "v2", "v3", "v4")] == [
        False, False, True, False, True]
    assert q.trim_snapshots("k1", 0) == ["v4"]  # never the running one, whatever the cap
    assert q.load_snapshot("v2") is not None and q.load_snapshot("other") is not None
    assert q.get_job("v1")["status"] == "completed"  # the video itself stays


def test_the_source_of_a_pending_extension_keeps_its_snapshot(q):
    job(q, "src", status="completed")
    job(q, "newer", status="completed")
    q.submit({"id": "ext", "prompt": "p", "frames": 16, "owner": "k1", "extends": "src",
              "source_frames": 8})  # queued: it will start from src's snapshot
    assert q.trim_snapshots("k1", 0) == ["newer"]
    q.finish_job("ext", "completed")
    assert q.trim_snapshots("k1", 0) == ["src"]
