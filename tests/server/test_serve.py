"""``pomstream serve`` with no configuration: an in-process queue (fakeredis behind the
same JobQueue), the API and a worker in one process, one video end to end."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.redis import free_port
from tests.support.servers import ROOT, ServerProcess, decode, wait_for, ws_collect, ws_url


def test_serve_without_redis_makes_a_video(tiny_model_file, tmp_path):
    port = free_port()
    proc = ServerProcess("serve", tmp_path, tiny_model_file, port=port).start()
    try:
        proc.wait_ready()
        log = proc.log()
        assert f"serving on http://127.0.0.1:{port}" in log and "fakeredis" in log
        assert "loopback" in log  # no keys: it says it only accepts this machine
        url = proc.url
        video = httpx.post(f"{url}/v1/videos", json={"prompt": "digit 8", "seconds": "2"},
                           timeout=10).json()
        texts, blobs = ws_collect(ws_url(url, video["id"]))
        assert texts[-1]["status"] == "completed" and len(blobs) == 1 + 16
        done = wait_for(lambda: (v := httpx.get(f"{url}/v1/videos/{video['id']}").json())
                        ["status"] == "completed" and v, 30, what="completion")
        data = httpx.get(f"{url}/v1/videos/{done['id']}/content", timeout=10).content
        assert decode(data).shape == (16, 16, 16, 3)
        assert (decode(b"".join(blobs)) == decode(data)).all()
    finally:
        assert proc.stop() == 0, proc.log()
    assert '"event": "worker.stop"' in proc.log()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pomstream", *args], cwd=ROOT, timeout=120,
                          capture_output=True, text=True)


def test_refuses_unsafe_or_incomplete_configurations():
    res = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert res.returncode == 2 and "without API keys" in res.stderr, res.stderr
    res = run_cli("worker")
    assert res.returncode == 2 and "REDIS_URL" in res.stderr, res.stderr
    res = run_cli("api")
    assert res.returncode == 2 and "REDIS_URL" in res.stderr, res.stderr


def test_sampling_settings_override_the_model_card(monkeypatch):
    import pydantic

    from pomstream.model.files import generation_defaults
    from pomstream.server.settings import Settings

    for key in ("POMSTREAM_STEPS", "POMSTREAM_FIRST_STEPS", "POMSTREAM_SAMPLER",
                "POMSTREAM_GUIDANCE", "POMSTREAM_FIRST_GUIDANCE", "POMSTREAM_LAYERS"):
        monkeypatch.delenv(key, raising=False)
    card = generation_defaults("demo")
    assert Settings().generation_params() == card
    assert Settings(steps=2, first_steps=3).generation_params() == {
        **card, "steps": 2, "first_steps": 3}
    monkeypatch.setenv("POMSTREAM_FIRST_STEPS", "0")  # 0: frame 0 like every other frame
    assert Settings().generation_params()["first_steps"] == 0
    with pytest.raises(pydantic.ValidationError):
        Settings(first_steps=-1)
    monkeypatch.setenv("POMSTREAM_FIRST_GUIDANCE", "2.5")
    assert Settings(guidance=7).generation_params() == {
        **card, "first_steps": 0, "guidance": 7, "first_guidance": 2.5}
    with pytest.raises(pydantic.ValidationError):
        Settings(first_guidance=51)
    monkeypatch.setenv("POMSTREAM_LAYERS", "joint")
    assert Settings().generation_params()["layers"] == "joint"
    with pytest.raises(pydantic.ValidationError):
        Settings(layers="pixels")


def test_a_worker_refuses_sampling_its_model_cannot_do(tiny_model_file):
    """Per-digit layers need a model that reads the digits grammar: refused at start,
    not on every job."""
    from pomstream.server.engine.build import build_worker
    from pomstream.server.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="digits grammar"):
        build_worker(Settings(model=str(tiny_model_file), layers="digits"), None, None)
