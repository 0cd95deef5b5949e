"""The worker in-process (fakeredis behind the JobQueue, the tiny model): continuous
batching, exact frame counts, failures, deletion, graceful stop and resume."""

from __future__ import annotations

import fakeredis
import pytest
import torch

from pomstream.model import StreamGenerator
from pomstream.server.engine.jobs import VideoJob
from pomstream.server.engine.worker import Worker
from pomstream.server.storage import LocalStorage
from pomstream.server.store import JobQueue
from tests.support.models import randomized_model
from tests.support.servers import decode, wait_for

KEYFRAMES = 4


@pytest.fixture(scope="module")
def generator():
    torch.set_num_threads(1)
    return StreamGenerator(randomized_model().float())


@pytest.fixture
def queue():
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return JobQueue(client, prefix="eng", claim_idle_ms=300)


def make_worker(queue, generator, tmp_path, **kwargs) -> Worker:
    # no rate floor, so no calibration steps: these tests count the generator's steps
    kwargs = {"max_sessions": 2, "snapshot_every": KEYFRAMES, "params": {"steps": 2},
              "min_session_fps": 0, **kwargs}
    return Worker(queue, generator, LocalStorage(tmp_path), **kwargs)


def submit(queue: JobQueue, job_id: str, frames: int, seed: int = 0) -> str:
    return queue.submit(VideoJob(job_id, "digits 1 and 2", frames, seed, "1", "16x16",
                                 "tiny").payload())


def finished(queue: JobQueue, *ids: str):
    return all((queue.get_job(i) or {}).get("status") in ("completed", "failed") for i in ids)


def test_continuous_batching_exact_frames(queue, generator, tmp_path):
    batches: list[int] = []
    step = generator.step
    generator.step = lambda sessions: batches.append(len(sessions)) or step(sessions)
    try:
        worker = make_worker(queue, generator, tmp_path).start()
        lengths = {"a": 5, "b": 11, "c": 7}
        ids = [submit(queue, name, n) for name, n in lengths.items()]
        wait_for(lambda: finished(queue, *ids), 60, what="all jobs")
        worker.stop()
    finally:
        generator.step = step
    assert max(batches) == 2, "two sessions must share a step"
    assert sum(batches) == sum(lengths.values())  # no frame made twice
    storage = LocalStorage(tmp_path)
    for name, n in lengths.items():
        record = queue.get_job(name)
        assert record["status"] == "completed" and record["progress"] == 100
        assert record["expires_at"] > record["completed_at"]
        with storage.open(name, "video") as f:
            assert decode(f.read()).shape == (n, 16, 16, 3)
        init, entries, end = queue.read_stream(name)
        parts = [e.data for e in entries]
        assert init and len(parts) == n and end.status == "completed"
        assert queue.load_snapshot(name).frame_index == n  # kept for continuing later


def test_bad_and_deleted_jobs(queue, generator, tmp_path):
    queue.submit({"id": "bad", "prompt": "x"})  # no frame count: a malformed payload
    submit(queue, "gone", 5)
    queue.delete_job("gone")
    long = submit(queue, "long", 400)
    worker = make_worker(queue, generator, tmp_path).start()
    wait_for(lambda: finished(queue, "bad"), 30, what="the bad job")
    assert queue.get_job("bad")["error"]["code"] == "invalid_job"
    wait_for(lambda: queue.last_fragment_index(long) >= 2, 30, what="the long job")
    queue.delete_job(long)  # while running: the worker stops it and stays healthy
    done = submit(queue, "after", 3)
    wait_for(lambda: finished(queue, done), 30, what="the next job")
    assert worker.alive and queue.get_job(long) is None
    worker.stop()
    assert queue.redis.xlen(queue.keys.queue) == 0  # every entry acked away


def test_graceful_stop_releases_and_resumes_identically(queue, generator, tmp_path):
    reference = submit(queue, "ref", 30, seed=9)
    worker = make_worker(queue, generator, tmp_path).start()
    wait_for(lambda: finished(queue, reference), 60, what="the reference")
    worker.stop()

    job = submit(queue, "job", 30, seed=9)
    first = make_worker(queue, generator, tmp_path, worker_id="first").start()
    wait_for(lambda: queue.last_fragment_index(job) >= 5, 30, what="some frames")
    first.stop()
    snap = queue.load_snapshot(job)
    assert queue.get_job(job)["status"] == "in_progress"
    assert snap.frame_index % KEYFRAMES == 0 and snap.frame_index < 30
    assert snap.frame_index == queue.last_fragment_index(job) + 1

    second = make_worker(queue, generator, tmp_path, worker_id="second").start()
    wait_for(lambda: finished(queue, job), 60, what="the resumed job")
    second.stop()
    storage = LocalStorage(tmp_path)
    with storage.open(job, "video") as a, storage.open(reference, "video") as b:
        assert (decode(a.read()) == decode(b.read())).all()
