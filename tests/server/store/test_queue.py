"""server.queue against a real redis-server started for the tests (see redis_fixture)."""

import threading
import time

import pytest
import redis

from pomstream.server.store import (
    GROUP,
    EndEntry,
    EventEntry,
    FragmentEntry,
    FragmentOrderError,
    InitConflict,
    InitEntry,
    JobExists,
    JobNotFound,
    JobQueue,
    QueueUnavailable,
    StreamClosed,
)
from tests.support.redis import RedisServer, make_client

# The redis_server (session) and redis_client fixtures; tests/conftest.py stays untouched.
IDLE_MS = 300  # claim_idle_ms in tests: short, with room for a loaded CPU


@pytest.fixture
def q(redis_client) -> JobQueue:
    queue = JobQueue(redis_client, prefix="t", claim_idle_ms=IDLE_MS)
    queue.ensure_group()
    return queue


def submit_n(q: JobQueue, n: int, **extra) -> list[str]:
    return [q.submit({"id": f"job{i}", "prompt": f"p{i}", "frames": 8, **extra})
            for i in range(n)]


def pending(q: JobQueue) -> int:
    return q.redis.xpending(q.keys.queue, GROUP)["pending"]


def read_until_end(q: JobQueue, job_id: str, after: str = "0-0", timeout: float = 5.0):
    """What a WebSocket handler does: replay, then block for new entries until the end."""
    entries, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = q.read_fragments(job_id, after=after, block_ms=500, count=3)
        entries += batch
        if batch:
            after = batch[-1].entry_id
        if entries and isinstance(entries[-1], EndEntry):
            return entries
    raise AssertionError(f"no end entry within {timeout} s; got {entries}")


# --- queue ------------------------------------------------------------------------------


def test_submit_take_ack_round_trip(q):
    job_id = q.submit({"id": "vid1", "prompt": "digits 3 and 7", "frames": 48, "seed": 1})
    record = q.get_job(job_id)
    assert record["status"] == "queued" and record["progress"] == 0
    assert record["prompt"] == "digits 3 and 7" and record["kind"] == "video"
    assert isinstance(record["created_at"], int) and record["completed_at"] is None

    (lease,) = q.take("w1", count=5, block_ms=100)
    assert lease.job_id == "vid1" and lease.consumer == "w1"
    assert lease.job == {"id": "vid1", "kind": "video", "prompt": "digits 3 and 7",
                         "frames": 48, "seed": 1}
    assert pending(q) == 1
    assert q.ack(lease) is True
    assert pending(q) == 0 and q.redis.xlen(q.keys.queue) == 0
    assert q.take("w1", block_ms=None) == []
    assert q.ack(lease) is False  # already gone


def test_submit_generates_an_id_and_refuses_duplicates(q):
    job_id = q.submit({"kind": "session", "prompt": "x"})
    assert job_id.startswith("session_") and q.get_job(job_id)["kind"] == "session"
    with pytest.raises(JobExists):
        q.submit({"id": job_id, "prompt": "y"})
    assert q.get_job(job_id)["prompt"] == "x"
    assert q.redis.xlen(q.keys.queue) == 1


def test_two_consumers_never_get_the_same_job(q):
    ids = set(submit_n(q, 30))
    got: dict[str, list[str]] = {"a": [], "b": []}

    def work(consumer):
        while leases := q.take(consumer, count=2, block_ms=50):
            for lease in leases:
                got[consumer].append(lease.job_id)
                assert q.ack(lease)

    threads = [threading.Thread(target=work, args=(c,)) for c in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == sorted(ids)


def test_stale_job_is_reclaimed_by_another_consumer(q):
    submit_n(q, 1)
    (lease,) = q.take("dead", block_ms=None)
    assert q.take("alive", block_ms=None) == []  # not stale yet
    time.sleep(IDLE_MS / 1000 + 0.05)
    (again,) = q.take("alive", block_ms=None)
    assert again.job == lease.job and again.consumer == "alive"
    # The stalled worker finds out it lost the job and cannot ack it for the new owner.
    assert q.heartbeat([lease]) == [lease]
    assert q.ack(lease) is False and pending(q) == 1
    assert q.ack(again) is True and pending(q) == 0


def test_heartbeat_prevents_reclaim(q):
    submit_n(q, 1)
    (lease,) = q.take("busy", block_ms=None)
    end = time.monotonic() + 3 * IDLE_MS / 1000
    while time.monotonic() < end:
        assert q.heartbeat([lease]) == []
        assert q.take("thief", block_ms=None) == []
        time.sleep(IDLE_MS / 6000)
    time.sleep(IDLE_MS / 1000 + 0.05)  # heartbeats stop: now it is stale
    assert [le.job_id for le in q.take("thief", block_ms=None)] == [lease.job_id]


def test_release_hands_the_job_over_at_once(q):
    submit_n(q, 1)
    (lease,) = q.take("leaving", block_ms=None)
    got = []
    waiter = threading.Thread(target=lambda: got.extend(q.take("other", block_ms=3000)))
    waiter.start()
    time.sleep(0.1)  # let it block in XREADGROUP
    start = time.monotonic()
    assert q.release(lease) is True
    waiter.join(5)
    assert time.monotonic() - start < 1.0
    assert [le.job for le in got] == [lease.job] and got[0].entry_id != lease.entry_id
    assert q.redis.xlen(q.keys.queue) == 1 and pending(q) == 1  # one copy, held by "other"
    assert q.release(lease) is False and q.ack(lease) is False
    assert q.ack(got[0]) is True


def test_entry_deleted_from_the_stream_is_acked_away(q):
    submit_n(q, 1)
    (lease,) = q.take("dead", block_ms=None)
    q.redis.xdel(q.keys.queue, lease.entry_id)
    time.sleep(IDLE_MS / 1000 + 0.05)
    assert q.take("alive", block_ms=None) == []
    assert pending(q) == 0


def test_cancel_flag(q):
    a, b = submit_n(q, 2)
    assert q.cancel("nope") is False
    assert not q.is_cancelled(a)
    assert q.cancel(a) is True
    assert q.is_cancelled(a) and not q.is_cancelled(b)
    q.delete_job(b)
    assert q.is_cancelled(b)  # deleted: the worker stops too


# --- frame streams ----------------------------------------------------------------------


def test_fragments_are_idempotent_by_index(q):
    (job_id,) = submit_n(q, 1)
    assert q.set_init(job_id, b"INIT", "video/mp4") is True
    assert q.set_init(job_id, b"INIT", "video/mp4") is False
    with pytest.raises(InitConflict):
        q.set_init(job_id, b"OTHER", "video/mp4")
    for i in range(6):
        assert q.append_fragment(job_id, i, b"frame%d" % i, keyframe=i % 3 == 0) is True
    # A worker crashed after frame 5; its successor resumed from a snapshot at frame 3.
    for i in range(3, 6):
        assert q.append_fragment(job_id, i, b"again%d" % i, keyframe=i == 3) is False
    with pytest.raises(FragmentOrderError) as err:
        q.append_fragment(job_id, 7, b"frame7", keyframe=False)
    assert err.value.expected == 6
    assert q.append_fragment(job_id, 6, b"frame6", keyframe=False) is True
    assert q.last_fragment_index(job_id) == 6

    entries = q.read_fragments(job_id)
    assert isinstance(entries[0], InitEntry) and entries[0].data == b"INIT"
    frags = entries[1:]
    assert [f.index for f in frags] == list(range(7))
    assert [f.data for f in frags] == [b"frame%d" % i for i in range(7)]
    assert [f.keyframe for f in frags] == [True, False, False, True, False, False, False]


def test_fragment_writes_need_the_job(q):
    with pytest.raises(JobNotFound):
        q.append_fragment("ghost", 0, b"x", keyframe=True)
    with pytest.raises(JobNotFound):
        q.publish_event("ghost", {"progress": 1})
    assert not q.redis.exists(q.keys.frames("ghost"), q.keys.meta("ghost"))


def test_replay_and_live_tail_until_end(q):
    (job_id,) = submit_n(q, 1)
    q.set_init(job_id, b"INIT", "video/mp4; codecs=avc1.640016")
    q.append_fragment(job_id, 0, b"f0", keyframe=True)
    n = 6

    def worker():
        for i in range(1, n):
            time.sleep(0.03)
            q.append_fragment(job_id, i, b"f%d" % i, keyframe=False)
            q.publish_event(job_id, {"type": "progress", "progress": 100 * (i + 1) // n})
        q.finish_job(job_id, "completed")

    writer = threading.Thread(target=worker)
    writer.start()
    entries = read_until_end(q, job_id)
    writer.join(5)
    assert isinstance(entries[0], InitEntry) and entries[0].mime.startswith("video/mp4")
    frags = [e for e in entries if isinstance(e, FragmentEntry)]
    assert [f.index for f in frags] == list(range(n))
    events = [e.event["progress"] for e in entries if isinstance(e, EventEntry)]
    assert events == sorted(events) and events[-1] == 100
    assert entries[-1] == EndEntry(entries[-1].entry_id, "completed", None)
    # A second viewer replays exactly the same, without waiting.
    assert read_until_end(q, job_id, timeout=1) == entries

    record = q.get_job(job_id)
    assert record["status"] == "completed" and record["progress"] == 100
    assert record["completed_at"] >= record["created_at"]
    assert q.is_ended(job_id)
    with pytest.raises(StreamClosed):
        q.append_fragment(job_id, n, b"late", keyframe=False)
    with pytest.raises(StreamClosed):
        q.finish_job(job_id, "failed", error="again")


def test_blocking_read_times_out_empty(q):
    (job_id,) = submit_n(q, 1)
    start = time.monotonic()
    assert q.read_fragments(job_id, block_ms=100) == []
    assert 0.08 < time.monotonic() - start < 2


def test_late_joiner_starts_at_the_last_keyframe(q):
    (job_id,) = submit_n(q, 1)
    assert q.last_keyframe_entry(job_id) is None and q.get_init(job_id) is None
    q.set_init(job_id, b"INIT", "video/mp4")
    for i in range(10):
        q.append_fragment(job_id, i, b"f%d" % i, keyframe=i % 4 == 0)
    ref = q.last_keyframe_entry(job_id)
    assert ref.index == 8
    init = q.get_init(job_id)
    assert (init.data, init.mime) == (b"INIT", "video/mp4")
    entries = q.read_fragments(job_id, after=ref.cursor)
    assert [e.index for e in entries] == [8, 9] and entries[0].keyframe
    assert entries[0].entry_id == ref.entry_id


def test_failed_job_end_entry_carries_the_error(q):
    (job_id,) = submit_n(q, 1)
    error = {"code": "cancelled", "message": "cancelled by user"}
    q.finish_job(job_id, "failed", error=error)
    (end,) = q.read_fragments(job_id)
    assert end == EndEntry(end.entry_id, "failed", error)
    record = q.get_job(job_id)
    assert record["status"] == "failed" and record["error"] == error
    assert record["progress"] == 0


# --- records ----------------------------------------------------------------------------


def test_update_job(q):
    (job_id,) = submit_n(q, 1)
    q.update_job(job_id, status="in_progress", progress=40, worker="w1")
    record = q.get_job(job_id)
    assert (record["status"], record["progress"], record["worker"]) == ("in_progress", 40, "w1")
    with pytest.raises(ValueError):
        q.update_job(job_id, status="done")
    with pytest.raises(JobNotFound):
        q.update_job("ghost", progress=1)
    assert q.get_job("ghost") is None and not q.redis.exists(q.keys.job("ghost"))


def test_list_jobs_pagination_and_order(q):
    ids = submit_n(q, 7)
    page = q.list_jobs(limit=3)  # newest first by default
    assert [j["id"] for j in page.jobs] == ids[::-1][:3] and page.has_more
    page = q.list_jobs(after=page.last_id, limit=3)
    assert [j["id"] for j in page.jobs] == ids[::-1][3:6] and page.has_more
    page = q.list_jobs(after=page.last_id, limit=3)
    assert [j["id"] for j in page.jobs] == ids[:1] and not page.has_more

    seen, after = [], None
    while True:
        page = q.list_jobs(after=after, limit=2, order="asc")
        seen += [j["id"] for j in page.jobs]
        if not page.has_more:
            break
        after = page.last_id
    assert seen == ids
    assert q.list_jobs(limit=7, order="asc").has_more is False

    with pytest.raises(JobNotFound):
        q.list_jobs(after="ghost")
    with pytest.raises(ValueError):
        q.list_jobs(limit=0)
    with pytest.raises(ValueError):
        q.list_jobs(order="sideways")


def test_list_jobs_skips_and_forgets_vanished_records(q):
    ids = submit_n(q, 5)
    q.redis.delete(q.keys.job(ids[1]), q.keys.job(ids[2]))  # as if they had expired
    page = q.list_jobs(limit=3, order="asc")
    assert [j["id"] for j in page.jobs] == [ids[0], ids[3], ids[4]] and not page.has_more
    assert q.redis.zcard(q.keys.index) == 3


def test_delete_removes_everything(q):
    a, b = submit_n(q, 2)
    q.set_init(a, b"INIT", "video/mp4")
    q.append_fragment(a, 0, b"f0", keyframe=True)
    q.save_snapshot(a, b"snap", 0)
    q.cancel(a)
    assert q.redis.exists(*q.keys.of_job(a)) == 5
    assert q.delete_job(a) is True and q.delete_job(a) is False
    assert q.redis.exists(*q.keys.of_job(a)) == 0
    assert q.get_job(a) is None
    assert [j["id"] for j in q.list_jobs().jobs] == [b]
    # Its queue entry is dropped by the next take instead of being handed out.
    assert [le.job_id for le in q.take("w", count=5, block_ms=None)] == [b]
    assert q.redis.xlen(q.keys.queue) == 1 and pending(q) == 1


def test_expire_sets_ttls_on_all_keys(q):
    a, b = submit_n(q, 2)
    q.set_init(a, b"INIT", "video/mp4")
    q.append_fragment(a, 0, b"f0", keyframe=True)
    q.cancel(a)
    assert q.expire_job("ghost", 60) is False
    assert q.expire_job(a, 60) is True
    # Keys written after expire_job take the record's TTL too.
    q.save_snapshot(a, b"snap", 0)
    q.append_fragment(a, 1, b"f1", keyframe=False)
    ttls = [q.redis.ttl(key) for key in q.keys.of_job(a)]
    assert all(55 <= t <= 60 for t in ttls), ttls
    assert abs(q.get_job(a)["expires_at"] - (time.time() + 60)) < 5
    assert q.redis.ttl(q.keys.job(b)) == -1
    c = q.submit({"id": "late"})
    q.expire_job(c, 60)
    q.set_init(c, b"INIT", "video/mp4")  # creates the frame stream and its meta hash
    q.save_snapshot(c, b"snap", 0)
    q.cancel(c)
    assert all(55 <= q.redis.ttl(key) <= 60 for key in q.keys.of_job(c))

    q.expire_job(b, 1)
    time.sleep(1.1)
    assert q.get_job(b) is None
    assert [j["id"] for j in q.list_jobs().jobs] == [c, a]
    assert q.redis.zscore(q.keys.index, b) is None
    assert q.redis.zscore(q.keys.expiring, b) is None


def test_snapshot_round_trip(q):
    (job_id,) = submit_n(q, 1)
    assert q.load_snapshot(job_id) is None
    blob = bytes(range(256)) * 16
    assert q.save_snapshot(job_id, blob, 7) is True
    data, frame_index = q.load_snapshot(job_id)
    assert (data, frame_index) == (blob, 7)
    assert q.save_snapshot(job_id, b"stale", 5) is False  # a stalled worker's old state
    assert q.load_snapshot(job_id) == (blob, 7)
    assert q.save_snapshot(job_id, b"newer", 9) is True
    assert q.load_snapshot(job_id) == (b"newer", 9)
    with pytest.raises(JobNotFound):
        q.save_snapshot("ghost", b"x", 0)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a:b", "../x", "x" * 65, "sp ace", "é"])
def test_ids_are_validated(q, bad):
    with pytest.raises(ValueError):
        q.get_job(bad)
    with pytest.raises(ValueError):
        q.submit({"id": bad, "prompt": "x"})
    with pytest.raises(ValueError):
        q.take(bad or "w:1", block_ms=None)


def test_bad_arguments_are_refused(q, redis_server):
    with pytest.raises(ValueError):
        q.submit({"prompt": "x", "status": "completed"})
    with pytest.raises(ValueError):
        q.submit({"kind": "audio"})
    with pytest.raises(ValueError):
        q.read_fragments("job0", after="$")
    with pytest.raises(ValueError):  # the client's socket timeout is 5 s
        q.take("w", block_ms=5000)
    with pytest.raises(ValueError):
        JobQueue(make_client(redis_server.port, decode_responses=True))


# --- Redis restarts ---------------------------------------------------------------------


def test_redis_restart_unavailable_then_recovers(tmp_path):
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        q = JobQueue(make_client(server.port), prefix="t", claim_idle_ms=IDLE_MS)
        q.ensure_group()
        kept = q.submit({"id": "kept", "prompt": "survives"})
        (lease,) = q.take("w1", block_ms=None)
        q.release(lease)

        server.stop(hard=True)
        for call in (lambda: q.submit({"prompt": "x"}), lambda: q.take("w1", block_ms=None),
                     lambda: q.get_job(kept), lambda: q.append_fragment(kept, 0, b"", True)):
            with pytest.raises(QueueUnavailable):
                call()

        server.start()  # same port, same dir: the AOF brings the data back
        (lease,) = q.take("w2", block_ms=None)
        assert lease.job_id == kept and q.get_job(kept)["prompt"] == "survives"
        assert q.ack(lease)
    finally:
        server.stop()


def test_restart_without_persistence_recreates_the_group(tmp_path):
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        q = JobQueue(make_client(server.port), prefix="t", claim_idle_ms=IDLE_MS)
        q.submit({"id": "lost"})  # no ensure_group: take creates it, from the start
        (old,) = q.take("w1", block_ms=None)
        server.stop()
        server.start()
        assert q.get_job("lost") is None
        assert q.heartbeat([old]) == [old] and q.ack(old) is False
        q.submit({"id": "new"})
        assert [le.job_id for le in q.take("w1", block_ms=None)] == ["new"]
    finally:
        server.stop()


def test_from_url(redis_server, redis_client):
    q = JobQueue.from_url(redis_server.url, prefix="u", claim_idle_ms=IDLE_MS)
    job_id = q.submit({"prompt": "x"})
    assert [le.job_id for le in q.take("w", block_ms=100)] == [job_id]
    with pytest.raises(redis.ResponseError):  # other errors are not disguised as outages
        q.redis.execute_command("NOSUCHCOMMAND")


def test_owner_slots_count_only_running_work(q):
    video = q.submit({"prompt": "a"})
    assert q.claim_slot("alice", video, limit=2)
    q.confirm_slot("alice", video)
    session = q.submit({"kind": "session", "prompt": "b", "state": "live"})
    assert q.claim_slot("alice", session, limit=2)
    q.confirm_slot("alice", session)
    assert not q.claim_slot("alice", "video_third", limit=2), "two are running"
    assert q.claim_slot("bob", "video_other", limit=2), "limits are per owner"
    assert q.claim_slot("alice", video, limit=2), "re-claiming a held job is no new slot"

    q.update_job(session, status="failed")  # a failed session frees its slot, live or not
    assert q.claim_slot("alice", "video_third", limit=2)  # claimed, not submitted: counts
    assert not q.claim_slot("alice", "video_fourth", limit=2)
    q.release_slot("alice", "video_third")
    q.finish_job(video, "completed")
    assert q.claim_slot("alice", "video_fourth", limit=1)
    # a job claimed as already submitted has no grace: once its record is gone, so is it
    assert q.claim_slot("erin", video, limit=1, submitted=True)
    q.delete_job(video)
    assert q.claim_slot("erin", "video_fifth", limit=1)


def test_rate_limit_window(q):
    assert all(q.hit_rate("carol", limit=3) == 0 for _ in range(3))
    wait = q.hit_rate("carol", limit=3)
    assert 1 <= wait <= 60 or q.hit_rate("carol", limit=3) == 0  # unless a minute turned
    assert q.hit_rate("dave", limit=3) == 0
