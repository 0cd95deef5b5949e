"""Workers as separate processes (``pomstream api`` + ``pomstream worker``) on a real Redis:
a worker killed with SIGKILL mid-job, and one stopped with SIGTERM; other workers finish
their jobs, and the final MP4 has exactly the frames asked for, identical to a video made in
one go (same seed: the frames after the last snapshot are regenerated bit for bit)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import torch

from pomstream.media.fmp4 import LiveEncoder
from pomstream.model import StreamGenerator, load_model
from pomstream.server.store import FragmentEntry, JobQueue
from tests.support.redis import RedisServer, free_port
from tests.support.servers import SNAPSHOT_EVERY, STEPS, ServerProcess, decode, wait_for

PREFIX = "crash"
CLAIM_IDLE_MS = 1500
PROMPT = "digits 4 and 2"
FPS = 8

pytestmark = pytest.mark.slow  # real processes killed and restarted


@pytest.fixture(scope="module")
def cluster(redis_server, tiny_model_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    common = ["--prefix", PREFIX, "--claim-idle-ms", str(CLAIM_IDLE_MS)]
    procs: list[ServerProcess] = []

    def start(role: str, name: str | None = None, *more: str) -> ServerProcess:
        extra = common + (["--worker-id", name] if name else []) + list(more)
        proc = ServerProcess(role, workdir, tiny_model_file, redis_url=redis_server.url,
                             port=free_port() if role == "api" else None, extra=extra)
        procs.append(proc.start())
        return proc

    queue = JobQueue.from_url(redis_server.url, prefix=PREFIX, claim_idle_ms=CLAIM_IDLE_MS)
    yield start, queue, procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def reference(tiny_model_file):
    """Frames of a video made in one go, encoded like the workers do, then decoded."""
    torch.set_num_threads(1)
    gen = StreamGenerator(load_model(tiny_model_file))

    def make(seed: int, frames: int) -> np.ndarray:
        session = gen.session(PROMPT, seed, steps=STEPS)
        with LiveEncoder(16, 16, FPS, qp=20, keyframe_interval=SNAPSHOT_EVERY) as enc:
            parts = [enc.encode(session.next_frame()).data for _ in range(frames)]
            return decode(enc.init_segment() + b"".join(parts))

    return make


def fragment_indices(queue: JobQueue, job_id: str) -> list[int]:
    indices, after = [], "0-0"
    while entries := queue.read_fragments(job_id, after=after, count=500):
        indices += [e.index for e in entries if isinstance(e, FragmentEntry)]
        after = entries[-1].entry_id
    return indices


def create(api: ServerProcess, seconds: int, seed: int) -> str:
    response = httpx.post(f"{api.url}/v1/videos", timeout=10,
                          json={"prompt": PROMPT, "seconds": seconds, "seed": seed})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def wait_completed(api: ServerProcess, video_id: str, timeout: float = 90) -> dict:
    def done():
        video = httpx.get(f"{api.url}/v1/videos/{video_id}", timeout=10).json()
        return video["status"] in ("completed", "failed") and video

    video = wait_for(done, timeout, 0.1, f"{video_id} to finish")
    assert video["status"] == "completed", video
    return video


def check_video(api, queue, video_id, frames, reference, seed) -> None:
    assert fragment_indices(queue, video_id) == list(range(frames))  # none missing or repeated
    data = httpx.get(f"{api.url}/v1/videos/{video_id}/content", timeout=10).content
    got = decode(data)
    assert got.shape == (frames, 16, 16, 3)
    want = reference(seed, frames)
    bad = [i for i in range(frames) if not np.array_equal(got[i], want[i])]
    assert not bad, f"regenerated frames differ: {bad}"


def progress_past(queue: JobQueue, video_id: str, frame: int):
    snap = queue.load_snapshot(video_id)
    return queue.last_fragment_index(video_id) >= frame and snap is not None


def test_sigkill_mid_job_another_worker_finishes(cluster, reference):
    start, queue, _ = cluster
    crashing = start("worker", "wa")
    api = start("api").wait_ready(path="/healthz")
    crashing.wait_log("pomstream: worker")
    api.wait_ready()  # now a worker is registered
    video_id = create(api, seconds=12, seed=11)
    frames = 12 * FPS

    wait_for(lambda: progress_past(queue, video_id, 2 * SNAPSHOT_EVERY + 1), 60, 0.01,
             "a few fragments and a snapshot")
    crashing.kill()
    stored, snap = queue.last_fragment_index(video_id), queue.load_snapshot(video_id)
    assert not queue.is_ended(video_id) and stored < frames - 1, "killed too late"
    assert snap.frame_index % SNAPSHOT_EVERY == 0 and snap.frame_index <= stored + 1

    rescuer = start("worker", "wb")
    video = wait_completed(api, video_id)
    assert video["progress"] == 100 and video["seconds"] == "12"
    check_video(api, queue, video_id, frames, reference, 11)
    assert f'"start_frame": {snap.frame_index}' in rescuer.log()


def test_sigterm_releases_job_to_another_worker(cluster, reference):
    start, queue, procs = cluster
    for proc in procs:  # idle workers of other tests stop first: wc must get the job
        if proc.role == "worker":
            assert proc.stop() in (0, -9), proc.log()
    stopping = start("worker", "wc").wait_log("pomstream: worker")
    api = start("api").wait_ready()
    video_id = create(api, seconds=30, seed=5)
    frames = 30 * FPS
    wait_for(lambda: progress_past(queue, video_id, SNAPSHOT_EVERY + 2), 60, 0.01,
             "generation to start")
    assert stopping.stop(timeout=30) == 0, stopping.log()
    assert '"event": "job.released"' in stopping.log()
    assert queue.get_job(video_id)["status"] == "in_progress"
    snap = queue.load_snapshot(video_id)
    assert snap.frame_index == queue.last_fragment_index(video_id) + 1  # stopped at a GOP end
    assert snap.frame_index % SNAPSHOT_EVERY == 0

    metrics_port = free_port()
    finisher = start("worker", "wd", "--metrics-port", str(metrics_port))
    wait_completed(api, video_id)
    check_video(api, queue, video_id, frames, reference, 5)
    # a standalone worker serves its own metrics
    finisher.wait_log("worker metrics on")
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    made = [line for line in text.splitlines()
            if line.startswith('pomstream_frames_generated_total{kind="video"}')]
    assert made and float(made[0].split()[-1]) >= frames - snap.frame_index, text[:500]
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/other", timeout=10).status_code == 404


def test_redis_restart_mid_job(tiny_model_file, tmp_path, reference):
    """Redis goes down mid-job (killed: an append-only file with fsync always keeps what it
    acknowledged) and comes back on the same port: the worker drops its jobs while Redis is
    away, reclaims them when it returns, and the video ends complete and exact."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisServer(redis_dir, persistent=True)
    server.start()
    common = ["--prefix", "restart", "--claim-idle-ms", str(CLAIM_IDLE_MS)]
    worker = ServerProcess("worker", tmp_path, tiny_model_file, redis_url=server.url,
                           extra=[*common, "--worker-id", "wr"]).start()
    api = ServerProcess("api", tmp_path, tiny_model_file, redis_url=server.url,
                        port=free_port(), extra=common).start()
    queue = JobQueue.from_url(server.url, prefix="restart", claim_idle_ms=CLAIM_IDLE_MS)
    try:
        worker.wait_log("pomstream: worker")
        api.wait_ready()
        video_id = create(api, seconds=12, seed=21)
        frames = 12 * FPS
        wait_for(lambda: progress_past(queue, video_id, SNAPSHOT_EVERY + 1), 60, 0.01,
                 "generation to start")
        server.stop(hard=True)
        time.sleep(1.0)  # the worker and the API notice the outage
        assert httpx.get(f"{api.url}/readyz", timeout=10).status_code == 503
        server.start()
        video = wait_completed(api, video_id, timeout=120)
        assert video["progress"] == 100
        open("/tmp/worker_restart.log", "w").write(worker.log())
        check_video(api, queue, video_id, frames, reference, 21)
        assert '"event": "worker.redis_unavailable"' in worker.log(), worker.log()[-2000:]
        assert worker.process.poll() is None, "the worker must survive the outage"
    finally:
        for proc in (api, worker):
            proc.stop()
        server.stop()
