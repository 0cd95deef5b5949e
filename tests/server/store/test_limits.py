"""Per-owner limits against a real redis-server, with the store's clock under the test's
control (no waiting for the wall-clock minute)."""

from pomstream.server.store import JobQueue


def test_rate_window_follows_the_store_clock(redis_client):
    now = [1_800_000_010.0]  # 10 s into a minute
    queue = JobQueue(redis_client, prefix="rate", clock=lambda: now[0])
    assert [queue.hit_rate("o1", 2) for _ in range(2)] == [0, 0]
    assert queue.hit_rate("o1", 2) == 50  # seconds until the window ends
    assert queue.hit_rate("o2", 2) == 0  # owners are counted apart
    now[0] += 50.5  # the next window
    assert queue.hit_rate("o1", 2) == 0


def test_a_claimed_slot_counts_for_its_grace_only(redis_client):
    now = [1_800_000_000.0]
    queue = JobQueue(redis_client, prefix="slots", clock=lambda: now[0])
    assert queue.claim_slot("o", "job_a", limit=1, grace_s=30)
    assert not queue.claim_slot("o", "job_b", limit=1, grace_s=30)  # a's claim holds
    now[0] += 31  # a was never submitted: its claim lapsed
    assert queue.claim_slot("o", "job_b", limit=1, grace_s=30)


def test_detached_sessions_hold_their_slot(redis_client):
    """A detached session keeps its state in Redis for a resume: it counts against its
    key's running work until it expires (forks included, issue 12)."""
    queue = JobQueue(redis_client, prefix="detach")
    assert queue.claim_slot("o", "sess_a", limit=1)
    queue.submit({"kind": "session", "id": "sess_a", "owner": "o", "state": "queued"})
    queue.confirm_slot("o", "sess_a")
    queue.update_job("sess_a", state="detached")
    assert not queue.claim_slot("o", "sess_b", limit=1)  # still held while detached
    queue.update_job("sess_a", state="stopped")
    queue.finish_job("sess_a", "completed")
    assert queue.claim_slot("o", "sess_b", limit=1)  # stopped: the slot is free again


def test_listings_lose_expired_jobs_and_old_jobs_are_migrated(redis_client):
    """Per-owner listings (tenancy) are pruned with the global index when a job's keys
    expire, and jobs recorded before listings existed are put into them at start."""
    import time

    queue = JobQueue(redis_client, prefix="lists")
    keys = queue.keys
    queue.submit({"id": "v1", "owner": "o1"})
    assert redis_client.zcard(keys.listing("o1", "video")) == 1
    queue.expire_job("v1", 1)
    time.sleep(1.2)
    assert queue.list_jobs(kind="video", owner="*").jobs == []  # prunes
    for key in (keys.listing("o1", "video"), keys.listing("*", "video")):
        assert redis_client.zcard(key) == 0
    assert not redis_client.hexists(keys.listed, "v1")
    # a job as the store wrote it before listings: record and global index only
    redis_client.hset(keys.job("old"), mapping={"id": '"old"', "kind": '"video"',
                                                "status": '"completed"'})
    redis_client.zadd(keys.index, {"old": 7})
    assert queue.migrate_listings() == 1 and queue.migrate_listings() == 0  # idempotent
    assert [j["id"] for j in queue.list_jobs(kind="video", owner="local").jobs] == ["old"]
    assert [j["id"] for j in queue.list_jobs(kind="video", owner="*").jobs] == ["old"]
    assert queue.delete_job("old")
    assert redis_client.zcard(keys.listing("local", "video")) == 0


def test_the_content_index_is_per_owner(redis_client):
    """Two keys may make byte-identical videos: each finds its own by the file's hash."""
    queue = JobQueue(redis_client, prefix="content")
    sha = "ab" * 32
    queue.index_content("v1", sha, 60, owner="o1")
    queue.index_content("v2", sha, 60, owner="o2")
    assert queue.find_by_content(sha, owner="o1") == "v1"
    assert queue.find_by_content(sha, owner="o2") == "v2"
    assert queue.find_by_content(sha, owner="o3") is None
