"""Time-slicing: a worker holds more jobs than batch slots and rotates them through the
batch (round robin), takes more than its slots only while its measured frame rate gives
each held job ``min_session_fps``, and reports the room it has left to the registry."""

from __future__ import annotations

import fakeredis
import pytest

from pomstream.server.engine.worker import Worker
from pomstream.server.storage import LocalStorage
from pomstream.server.store import JobQueue, WorkerRegistry
from tests.server.engine.fake_generator import FakeGenerator
from tests.server.engine.test_failures import final, video
from tests.support.servers import wait_for


@pytest.fixture
def queue():
    return JobQueue(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="slice",
                    claim_idle_ms=3000)


@pytest.fixture
def workers():
    """Start workers through this; each is stopped after the test, passed or failed."""
    started = []

    def start(*args, **kwargs) -> Worker:
        started.append(Worker(*args, **kwargs).start())
        return started[-1]

    yield start
    for worker in started:
        worker.stop()
        assert worker.crashed is None


def test_more_jobs_than_slots_take_turns_fairly(queue, workers, tmp_path):
    generator, steps = FakeGenerator(), []
    step = generator.step

    def recording(sessions):
        steps.append([(s.seed, s.frame_index) for s in sessions])
        return step(sessions)

    generator.step = recording
    for i in range(12):  # all queued before the worker starts: admitted in one take
        queue.submit(video(f"v{i}", frames=30, seed=i))
    workers(queue, generator, LocalStorage(tmp_path), max_sessions=4, max_held=12,
                    min_session_fps=0, snapshot_every=8)
    wait_for(lambda: all(final(queue, f"v{i}") for i in range(12)), 60, what="12 videos")
    assert all(queue.get_job(f"v{i}")["status"] == "completed" for i in range(12))
    assert max(len(s) for s in steps) == 4  # never more than the slots in one step
    # round robin: 12 jobs on 4 slots advance together, a round of 3 steps at a time, so
    # no job is ever more than one frame ahead of another
    made = dict.fromkeys(range(12), 0)
    for batch in steps:
        for seed, _ in batch:
            made[seed] += 1
        assert max(made.values()) - min(made.values()) <= 1, made


def test_beyond_its_slots_a_worker_takes_what_its_frame_rate_allows(queue, workers, tmp_path):
    # a full batch of 2 takes >= 20 ms: at most 100 frames/s, so at 10 frames/s each at
    # most 10 jobs are held; the 16 queued would all fit max_held
    for i in range(16):
        queue.submit(video(f"w{i}", frames=400, seed=i))
    worker = workers(queue, FakeGenerator(delay_s=0.02), LocalStorage(tmp_path),
                    max_sessions=2, max_held=16, min_session_fps=10,
                    snapshot_every=50)
    registry = WorkerRegistry(queue)
    wait_for(lambda: len(worker._active) > 2, 30, what="time-slicing beyond the 2 slots")

    def settled():  # held up to its capacity, said so, the rest queued: all at one moment
        held, (length, taken) = len(worker._active), queue.depth()
        return (held == worker.capacity() and length - taken == 16 - held
                and registry.spare(60) == 0)

    wait_for(settled, 30, what="the worker to fill the room its frame rate gives")
    assert 2 < len(worker._active) <= 10


def test_without_a_rate_floor_a_worker_holds_max_held(queue, workers, tmp_path):
    for i in range(6):
        queue.submit(video(f"x{i}", frames=400, seed=i))
    worker = workers(queue, FakeGenerator(delay_s=0.01), LocalStorage(tmp_path),
                    max_sessions=2, max_held=5, min_session_fps=0, snapshot_every=50)
    wait_for(lambda: len(worker._active) == 5, 30, what="5 held jobs")
    wait_for(lambda: WorkerRegistry(queue).spare(60) == 0, 30, what="no room reported")
    assert queue.depth() == (6, 5)


def test_a_worker_starts_once(queue, workers, tmp_path):
    worker = workers(queue, FakeGenerator(), LocalStorage(tmp_path))
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()


def test_a_worker_knows_its_room_before_the_first_job(queue, workers, tmp_path):
    """A burst of viewers at start must not be refused for lack of a measurement: the
    worker times a full batch of throwaway sessions first (counted at 80%)."""
    generator = FakeGenerator(delay_s=0.02)  # a full batch of 2: at most 100 frames/s
    worker = workers(queue, generator, LocalStorage(tmp_path), max_sessions=2, max_held=16,
                     min_session_fps=10)
    registry = WorkerRegistry(queue)
    wait_for(lambda: (registry.spare(60) or 0) > 2, 10, what="a calibrated room report")
    assert 2 < worker.capacity() <= 8 and not worker._active
    assert generator.calls == 3  # the calibration's steps, nothing else ran
