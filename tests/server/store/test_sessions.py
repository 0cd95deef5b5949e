"""Settling a session, against a real redis-server: detached with its expiry in one step."""

import time

import pytest

from pomstream.server.store import JobQueue
from pomstream.server.store.sessions import SessionStore


@pytest.fixture
def store(redis_client) -> SessionStore:
    queue = JobQueue(redis_client, prefix="settle", claim_idle_ms=3000)
    queue.ensure_group()
    return SessionStore(queue, viewer_timeout_s=15.0)


def session(store, sid):
    store.queue.submit({"id": sid, "prompt": "digit 1", "frames": 8, "owner": "k1",
                        "kind": "session"})
    store.queue.save_snapshot(sid, b"x" * 10, 1)
    store.redis.xadd(store.ctl_key(sid), {"type": "ack"})


def test_a_session_nobody_watches_settles_detached_and_expiring_at_once(store):
    session(store, "sess_a")
    store.redis.hset(store.view_key("sess_a"), mapping={"viewer": "old", "seen": 0})
    before = time.time()
    assert store.settle("sess_a", detached_ttl_s=120) == 0
    job = store.queue.get_job("sess_a")
    assert job["state"] == "detached" and before + 120 <= job["expires_at"] + 1
    keys = [store.queue.keys.job("sess_a"), store.view_key("sess_a"), store.ctl_key("sess_a"),
            store.queue.keys.snapshot("sess_a")]
    assert all(0 < store.redis.ttl(k) <= 120 for k in keys), [store.redis.ttl(k) for k in keys]
    assert store.redis.zscore(store.queue.keys.expiring, "sess_a") is not None


def test_a_watched_session_settles_live_and_keeps_its_keys(store):
    session(store, "sess_b")
    store.redis.hset(store.view_key("sess_b"), mapping={"viewer": "tok", "seen": time.time()})
    assert store.settle("sess_b", detached_ttl_s=120) == 1
    assert store.queue.get_job("sess_b")["state"] == "live"
    assert store.redis.ttl(store.queue.keys.job("sess_b")) == -1
    assert store.settle("sess_gone", detached_ttl_s=120) == -1
    with pytest.raises(ValueError, match="detached_ttl_s"):
        store.settle("sess_b", detached_ttl_s=0)
