"""Live sessions (``WS /v1/sessions``) end to end: ``pomstream serve`` on a real redis-server,
a WebSocket client, PyAV decoding what comes back. The encoder runs lossless (qp 0), so
decoded frames are equal exactly when the generated frames are."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pomstream.server.store import JobQueue
from tests.support.redis import free_port
from tests.support.servers import ServerProcess, decode, wait_for

PREFIX = "live"
WINDOW = 4
ENV = {"POMSTREAM_SESSION_WINDOW": str(WINDOW), "POMSTREAM_ENCODER_QP": "0"}


def start_server(redis_server, model, workdir) -> ServerProcess:
    proc = ServerProcess("serve", workdir, model, redis_url=redis_server.url, port=free_port(),
                         extra=["--prefix", PREFIX], env=ENV)
    return proc.start().wait_ready()


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    proc = start_server(redis_server, tiny_model_file, tmp_path_factory.mktemp("live"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def queue(redis_server):
    return JobQueue.from_url(redis_server.url, prefix=PREFIX)


class Live:
    """A WebSocket client of /v1/sessions that sorts what arrives."""

    def __init__(self, server: ServerProcess):
        self.ws = connect(server.url.replace("http://", "ws://") + "/v1/sessions",
                          open_timeout=10, max_size=None).__enter__()
        self.init: bytes | None = None
        self.frames: list[tuple[dict, bytes]] = []
        self.texts: list[dict] = []

    def send(self, **message) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float = 30.0):
        """The next message: a dict for JSON; a frame's JSON and bytes are read together."""
        message = self.ws.recv(timeout=timeout)
        if isinstance(message, bytes):
            raise AssertionError("binary message without its JSON header")
        body = json.loads(message)
        if body["type"] in ("init", "frame"):
            data = self.ws.recv(timeout=timeout)
            assert isinstance(data, bytes), body
            if body["type"] == "init":
                self.init = data
            else:
                self.frames.append((body, data))
        else:
            self.texts.append(body)
        return body

    def until(self, kind: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.recv(max(0.1, deadline - time.monotonic()))
            if body["type"] == kind:
                return body
        raise AssertionError(f"no {kind!r} message within {timeout} s")

    def collect(self, n: int, timeout: float = 60.0) -> list[tuple[dict, bytes]]:
        target = len(self.frames) + n
        deadline = time.monotonic() + timeout
        while len(self.frames) < target:
            self.recv(max(0.1, deadline - time.monotonic()))
        return self.frames[target - n:]

    def indices(self) -> list[int]:
        return [meta["frame"] for meta, _ in self.frames]

    def decoded(self) -> np.ndarray:
        return decode(self.init + b"".join(data for _, data in self.frames))

    def close(self) -> None:
        self.ws.close()


def test_start_prompt_pause_resume_fork_stop(server, queue):
    live = Live(server)
    live.send(type="start", prompt="digit 3", seed=5)
    session = live.until("session")
    sid = session["session_id"]
    assert sid.startswith("sess_") and session["resumed"] is False
    live.collect(10)
    assert live.init is not None and live.indices() == list(range(10))
    assert live.frames[0][0]["keyframe"] and live.frames[0][0]["made_ms"] > 0
    assert live.decoded().shape == (10, 16, 16, 3)

    live.send(type="prompt", prompt="digit 8")
    assert live.until("prompt")["prompt"] == "digit 8"
    before = len(live.frames)
    live.collect(2 * WINDOW + 2)
    assert any(meta["keyframe"] for meta, _ in live.frames[before + 1:]), \
        "a prompt change cuts to a keyframe"

    live.send(type="pause")
    paused = live.until("paused")
    during = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            during.append(live.ws.recv(timeout=deadline - time.monotonic()))
        except TimeoutError:
            break
    assert during == [], "nothing may arrive while paused"
    made = queue.last_fragment_index(sid)
    time.sleep(0.5)
    assert queue.last_fragment_index(sid) == made, "a paused session is not generated"
    assert made - paused["frame"] <= WINDOW + 1

    live.send(type="resume")
    live.until("resumed")
    live.collect(3)
    indices = live.indices()
    assert indices == list(range(len(indices))), "no frame lost or repeated across pause"

    live.send(type="fork")
    forked = live.until("forked")
    fork_id, fork_frame = forked["fork_id"], forked["frame"]
    assert fork_id.startswith("sess_") and fork_id != sid and fork_frame > 0

    live.send(type="stop")
    live.until("stopping")
    end = live.until("end")
    assert end["status"] == "completed"
    with pytest.raises(ConnectionClosed):
        live.recv(5)
    assert live.decoded().shape == (len(live.frames), 16, 16, 3)
    assert queue.get_job(sid)["state"] == "stopped"

    # the fork is detached until someone resumes it; it starts where the parent was
    wait_for(lambda: queue.get_job(fork_id)["state"] == "detached", 30,
             what="the fork to settle")
    child = Live(server)
    child.send(type="resume", session_id=fork_id)
    resumed = child.until("session")
    assert (resumed["resumed"], resumed["frame"]) == (True, fork_frame)
    child.collect(5)
    assert child.indices() == list(range(fork_frame, fork_frame + 5))
    assert child.frames[0][0]["keyframe"]
    assert child.decoded().shape == (5, 16, 16, 3)
    # the parent kept going from the same state: its frame fork_frame is the fork's first
    # (unless the parent's prompt changed in between, which it did not after the fork)
    child.close()

    stopped = Live(server)  # a stopped session cannot be resumed
    stopped.send(type="resume", session_id=sid)
    assert stopped.until("error")["code"] == "session_ended"
    stopped.close()


@pytest.mark.slow
def test_disconnect_restart_resume_continues_identically(redis_server, tiny_model_file,
                                                         tmp_path, queue):
    proc = start_server(redis_server, tiny_model_file, tmp_path)
    try:
        ref = Live(proc)
        ref.send(type="start", prompt="digits 1 and 2", seed=11)
        ref.until("session")
        ref.collect(24)
        reference = ref.decoded()
        ref.close()

        first = Live(proc)
        first.send(type="start", prompt="digits 1 and 2", seed=11)
        sid = first.until("session")["session_id"]
        first.collect(7)
        first.close()  # the viewer goes away: the worker snapshots and detaches
        wait_for(lambda: queue.get_job(sid)["state"] == "detached", 30,
                 what="the session to detach")
        assert queue.redis.xlen(queue.keys.queue) == 0, "a detached session leaves the queue"
        assert proc.stop() == 0, proc.log()  # a server restart in between
        proc = start_server(redis_server, tiny_model_file, tmp_path)

        again = Live(proc)
        again.send(type="resume", session_id=sid)
        resumed = again.until("session")
        k = resumed["frame"]
        assert resumed["resumed"] and 7 <= k <= 7 + WINDOW + 1
        again.collect(24 - k)
        assert again.indices() == list(range(k, 24))
        assert again.frames[0][0]["keyframe"]
        frames = again.decoded()
        assert np.array_equal(frames, reference[k:24]), "a resumed session makes the same frames"
        again.close()
    finally:
        proc.stop()


def test_client_acks_bound_how_far_generation_runs_ahead(server, queue):
    live = Live(server)
    live.send(type="start", prompt="digit 4", seed=1, ack=True)
    sid = live.until("session")["session_id"]
    live.collect(WINDOW)
    time.sleep(1.0)  # no acks: the worker must stop at the window
    assert queue.last_fragment_index(sid) == WINDOW - 1
    live.send(type="ack", frame=2)
    live.collect(3)
    time.sleep(0.5)
    assert queue.last_fragment_index(sid) == 2 + WINDOW
    live.close()


BAD_FIRST = [
    (b"\x00binary", "protocol_error", True),
    ("not json", "protocol_error", True),
    ("[1, 2]", "protocol_error", True),
    ('{"type": 5}', "protocol_error", True),
    ('{"type": "prompt", "prompt": "x"}', "protocol_error", True),
    ("x" * 20_000, "protocol_error", True),
    ('{"type": "start"}', "invalid_prompt", False),
    ('{"type": "start", "prompt": "  "}', "invalid_prompt", False),
    ('{"type": "start", "prompt": "' + "x" * 33 + '"}', "prompt_too_long", False),
    ('{"type": "start", "prompt": "x", "size": "64x64"}', "invalid_size", False),
    ('{"type": "start", "prompt": "x", "seed": -1}', "invalid_seed", False),
    ('{"type": "start", "prompt": "x", "seed": "7"}', "invalid_seed", False),
    ('{"type": "start", "prompt": "x", "ack": "yes"}', "invalid_value", False),
    ('{"type": "resume", "session_id": "../../etc"}', "invalid_session_id", False),
    ('{"type": "resume", "session_id": "sess_missing"}', "not_found", False),
    ('{"type": "resume"}', "invalid_session_id", False),
]


@pytest.mark.parametrize(("message", "code", "closes"), BAD_FIRST)
def test_bad_first_messages(server, message, code, closes):
    live = Live(server)
    if not refused(live, message, code, closes, streaming=False):
        # the connection survives a bad value and takes a good start
        live.send(type="start", prompt="digit 1")
        live.until("session")
        live.send(type="stop")
        live.until("end")
    live.close()


def refused(live: Live, message: str | bytes, code: str, closes: bool, streaming: bool
            ) -> bool:
    """Send a bad message: the server answers an error ``code``; with ``closes`` it then
    closes the connection with 1008 (after frames already in flight, when ``streaming``).
    True when the connection was closed."""
    live.ws.send(message)
    error = live.until("error", 10)
    assert error["code"] == code and error["message"]
    if closes:
        with pytest.raises(ConnectionClosed) as info:
            live.recv(5)
            while streaming:
                live.recv(5)
        assert info.value.rcvd.code == 1008
    return closes


BAD_CONTROLS = [
    ('{"type": "dance"}', "protocol_error", True),
    ('{"type": "start", "prompt": "x"}', "protocol_error", True),
    ('{"type": "resume", "session_id": "sess_other"}', "protocol_error", True),
    ("{}", "protocol_error", True),
    ('{"type": "prompt", "prompt": ""}', "invalid_prompt", False),
    ('{"type": "prompt", "prompt": 3}', "invalid_prompt", False),
    ('{"type": "ack", "frame": "x"}', "invalid_value", False),
]


@pytest.mark.parametrize(("message", "code", "closes"), BAD_CONTROLS)
def test_bad_control_messages(server, message, code, closes):
    live = Live(server)
    live.send(type="start", prompt="digit 2")
    live.until("session")
    if not refused(live, message, code, closes, streaming=True):
        live.collect(2)  # still streaming
        live.send(type="stop")
        live.until("end")
    live.close()


def test_live_session_on_the_in_process_backend(tiny_model_file, tmp_path):
    """``pomstream serve`` with no Redis (fakeredis behind the same code): the README's
    first command must stream live sessions too."""
    proc = ServerProcess("serve", tmp_path, tiny_model_file, port=free_port(), env=ENV)
    proc.start().wait_ready()
    try:
        live = Live(proc)
        live.send(type="start", prompt="digit 6", seed=2)
        sid = live.until("session")["session_id"]
        live.collect(6)
        live.send(type="fork")
        fork = live.until("forked")["fork_id"]
        live.close()
        again = Live(proc)
        again.send(type="resume", session_id=sid)
        k = again.until("session")["frame"]
        again.collect(3)
        first = again.indices()[0]  # k if it had detached, later if it was still running
        assert again.indices() == [first, first + 1, first + 2] and first >= k
        assert again.frames[0][0]["keyframe"]
        again.send(type="stop")
        again.until("end")
        child = Live(proc)
        child.send(type="resume", session_id=fork)
        child.collect(2)
        assert child.decoded().shape == (2, 16, 16, 3)
        child.close()
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.mark.slow
def test_worker_killed_mid_session_another_continues_identically(redis_server,
                                                                 tiny_model_file, tmp_path):
    common = ["--prefix", "livecrash", "--claim-idle-ms", "1500"]

    def start(role: str, name: str | None = None) -> ServerProcess:
        extra = common + (["--worker-id", name] if name else [])
        return ServerProcess(role, tmp_path, tiny_model_file, redis_url=redis_server.url,
                             port=free_port() if role == "api" else None, extra=extra,
                             env=ENV).start()

    api = start("api")
    w1 = start("worker", "w1").wait_log("worker.start")
    procs = [api, w1]
    try:
        api.wait_ready()
        ref = Live(api)
        ref.send(type="start", prompt="digits 4 and 2", seed=3)
        ref.until("session")
        ref.collect(24)
        ref.close()

        live = Live(api)
        live.send(type="start", prompt="digits 4 and 2", seed=3)
        live.until("session")
        live.collect(9)
        procs.append(start("worker", "w2").wait_log("worker.start"))
        w1.kill()  # SIGKILL mid-session: w2 reclaims the job and resumes from the snapshot
        live.collect(24 - 9, timeout=90)
        assert live.indices() == list(range(24)), "no frame lost or repeated"
        assert np.array_equal(live.decoded(), ref.decoded())
        live.close()
    finally:
        for proc in procs:
            proc.stop()


def test_sessions_need_the_api_key(tiny_model_file, tmp_path):
    from websockets.exceptions import InvalidStatus

    from pomstream.server.http.app import create_app
    from pomstream.server.runtime import Runtime, make_queue
    from pomstream.server.settings import Settings, model_info
    from pomstream.server.storage import LocalStorage
    from tests.support.servers import ThreadServer

    settings = Settings(api_keys="k1", model=str(tiny_model_file), storage_dir=tmp_path)
    runtime = Runtime(settings, make_queue(settings), LocalStorage(tmp_path),
                      model_info(settings.model))
    with ThreadServer(create_app(settings, runtime)) as srv:
        url = srv.url.replace("http://", "ws://") + "/v1/sessions"
        for query in ("", "?api_key=nope"):
            with pytest.raises(InvalidStatus) as info:
                connect(url + query, open_timeout=10)
            assert info.value.response.status_code == 401
        with connect(url, open_timeout=10, subprotocols=["pomstream", "bearer.k1"]) as ws:
            ws.send(json.dumps({"type": "start", "prompt": "digit 9"}))
            session = json.loads(ws.recv(timeout=10))  # no worker here: it stays queued
            assert (session["type"], session["status"]) == ("session", "queued")


def test_a_second_viewer_takes_over(server):
    first = Live(server)
    first.send(type="start", prompt="digit 7", seed=4)
    sid = first.until("session")["session_id"]
    first.collect(3)
    second = Live(server)
    second.send(type="resume", session_id=sid)
    assert second.until("session")["resumed"]
    second.collect(3)
    assert second.frames[0][0]["keyframe"] and second.decoded().shape == (3, 16, 16, 3)
    assert first.until("error", 10)["code"] == "taken_over"
    with pytest.raises(ConnectionClosed):
        while True:
            first.recv(5)
    second.send(type="stop")
    assert second.until("end")["status"] == "completed"
