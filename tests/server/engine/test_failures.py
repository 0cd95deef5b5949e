"""The engine's failure modes as unit tests: a torch-free fake generator, fakeredis behind
the real JobQueue, a worker in this process."""

from __future__ import annotations

import fakeredis
import pytest

from pomstream.server.engine.jobs import Ending, VideoJob
from pomstream.server.engine.worker import Worker
from pomstream.server.storage import LocalStorage
from pomstream.server.store import JobQueue
from tests.server.engine.fake_generator import FakeGenerator
from tests.support.servers import wait_for


@pytest.fixture
def queue():
    return JobQueue(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="fail",
                    claim_idle_ms=300)


def run(queue, generator, tmp_path, *jobs, **kwargs) -> Worker:
    # no rate floor: no calibration steps, so the fake's step calls count from the jobs'
    kwargs = {"min_session_fps": 0, **kwargs}
    worker = Worker(queue, generator, LocalStorage(tmp_path), max_sessions=4,
                    snapshot_every=4, **kwargs).start()
    for job in jobs:
        queue.submit(job)
    return worker


def video(job_id: str, frames: int = 6, **extra) -> dict:
    return {**VideoJob(job_id, "digit 1", frames, 3, "1", "16x16", "fake").payload(), **extra}


def final(queue, job_id):
    return (queue.get_job(job_id) or {}).get("status") in ("completed", "failed")


def test_a_model_error_fails_its_batch_not_the_worker(queue, tmp_path):
    worker = run(queue, FakeGenerator(fail_at=2), tmp_path, video("a"))
    wait_for(lambda: final(queue, "a"), 20, what="job a to end")
    assert queue.get_job("a")["error"]["code"] == "generation_error"
    assert "model exploded" in queue.get_job("a")["error"]["message"]
    queue.submit(video("b"))  # the worker goes on with the next job
    wait_for(lambda: final(queue, "b"), 20, what="job b to end")
    assert queue.get_job("b")["status"] == "completed" and worker.alive
    worker.stop()
    assert worker.crashed is None


def test_a_malformed_payload_is_an_invalid_job(queue, tmp_path):
    worker = run(queue, FakeGenerator(), tmp_path, video("bad", frames=0))
    wait_for(lambda: final(queue, "bad"), 20, what="the bad job to end")
    assert queue.get_job("bad")["error"]["code"] == "invalid_job"
    worker.stop()
    assert worker.crashed is None and queue.depth() == (0, 0)  # acked, not left pending


def test_an_extension_of_a_missing_source_fails_clearly(queue, tmp_path):
    job = video("ext", frames=8, extends="gone", source_frames=4)
    worker = run(queue, FakeGenerator(), tmp_path, job)
    wait_for(lambda: final(queue, "ext"), 20, what="the extension to end")
    assert queue.get_job("ext")["error"]["code"] == "source_expired"
    worker.stop()


def test_a_deleted_job_is_dropped_without_writes(queue, tmp_path):
    generator = FakeGenerator()
    step = generator.step

    def slow_step(sessions):  # delete the job while it runs
        if generator.calls == 2:
            queue.delete_job("del")
        return step(sessions)

    generator.step = slow_step
    worker = run(queue, generator, tmp_path, video("del", frames=50))
    wait_for(lambda: queue.depth() == (0, 0), 20, what="the lease to be acked")
    worker.stop()
    assert queue.get_job("del") is None and not (tmp_path / "del.mp4").exists()
    assert worker.crashed is None


def test_graceful_stop_releases_with_a_snapshot_and_another_worker_finishes(queue, tmp_path):
    generator = FakeGenerator(delay_s=0.05)
    worker = run(queue, generator, tmp_path, video("long", frames=40))
    wait_for(lambda: generator.calls >= 6, 20, what="some frames")
    worker.stop()
    record = queue.get_job("long")
    assert record["status"] == "in_progress" and queue.load_snapshot("long") is not None
    assert queue.load_snapshot("long").frame_index % 4 == 0  # at a snapshot point
    second = run(queue, FakeGenerator(), tmp_path / "2")
    wait_for(lambda: final(queue, "long"), 30, what="the second worker to finish it")
    second.stop()
    assert queue.get_job("long")["status"] == "completed"
    init, parts, end = queue.read_stream("long")
    assert [p.index for p in parts] == list(range(40)) and end.status == "completed"


def test_endings_are_an_enum_of_the_documented_five():
    assert [e.value for e in Ending] == ["finalize", "fail", "release", "detach", "stop"]


def test_finished_videos_keep_their_keys_snapshots_under_the_cap(queue, tmp_path):
    """Each finished video keeps its final snapshot (to be extended); past the key's cap
    the oldest ones are dropped, the video itself stays."""
    size = len(FakeGenerator().session("digit 1", 3).snapshot())
    worker = run(queue, FakeGenerator(), tmp_path, max_snapshot_bytes=2 * size)
    for name in ("old", "mid", "new"):  # one after the other: their ages are known
        queue.submit(video(name))
        wait_for(lambda name=name: final(queue, name), 20, what=f"video {name}")
    worker.stop()
    assert [queue.load_snapshot(n) is not None for n in ("old", "mid", "new")] == [
        False, True, True]
    assert queue.get_job("old")["status"] == "completed"
