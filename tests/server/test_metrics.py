"""Prometheus ``/metrics``: the exposition format of the hand-written metric types, and the
metrics of a running ``pomstream serve`` moving as a video and a live session are made."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from websockets.sync.client import connect

from pomstream.server.metrics import Counter, Histogram, RateMeter
from tests.support.servers import shared_server, wait_for

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[str, float]:
    """``name{labels}`` -> value; every non-comment line must be a valid sample."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \w+ .+$", line) or not line, line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def test_histogram_and_counter_exposition():
    h = Histogram("t_seconds", "help text", [0.1, 1.0], ["kind"])
    for value in (0.05, 0.5, 3.0):
        h.observe(value, kind="video")
    c = Counter("t_total", "frames", ["kind"])
    c.inc(2, kind="a\"b")
    text = "\n".join(h.render() + c.render())
    samples = parse(text)
    assert samples['t_seconds_bucket{kind="video",le="0.1"}'] == 1
    assert samples['t_seconds_bucket{kind="video",le="1"}'] == 2
    assert samples['t_seconds_bucket{kind="video",le="+Inf"}'] == 3
    assert samples['t_seconds_count{kind="video"}'] == 3
    assert samples['t_seconds_sum{kind="video"}'] == pytest.approx(3.55)
    assert samples['t_total{kind="a\\"b"}'] == 2
    assert "# TYPE t_seconds histogram" in text
    with pytest.raises(ValueError):
        c.inc(-1, kind="x")
    with pytest.raises(ValueError):
        h.observe(1.0)  # missing label


def test_rate_meter_forgets_old_events():
    now = [100.0]
    meter = RateMeter(window_s=10, clock=lambda: now[0])
    meter.add(30)
    assert meter.rate() == 3.0
    now[0] += 11
    assert meter.rate() == 0.0


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    yield from shared_server(redis_server, tiny_model_file, tmp_path_factory, "metrics")


def scrape(url: str) -> dict[str, float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_metrics_move_when_a_video_is_made(server):
    before = scrape(server.url)
    assert before["pomstream_queue_depth"] == 0
    assert before.get('pomstream_frames_generated_total{kind="video"}', 0) == 0
    video = httpx.post(f"{server.url}/v1/videos", json={"prompt": "digit 1", "seconds": 2},
                       timeout=10).json()
    wait_for(lambda: httpx.get(f"{server.url}/v1/videos/{video['id']}").json()["status"]
             == "completed", 60, what="the video")
    after = scrape(server.url)
    frames = 2 * 8
    assert after['pomstream_frames_generated_total{kind="video"}'] == frames
    assert after['pomstream_time_to_first_frame_seconds_count{kind="video"}'] == 1
    assert after['pomstream_time_to_first_frame_seconds_sum{kind="video"}'] > 0
    assert after['pomstream_frame_latency_seconds_count{kind="video"}'] == frames
    assert after['pomstream_frame_latency_seconds_bucket{kind="video",le="+Inf"}'] == frames
    assert after["pomstream_encode_seconds_count"] == frames
    assert after["pomstream_frames_per_second"] > 0
    assert after["pomstream_queue_depth"] == 0 and after["pomstream_jobs_held"] == 0


@pytest.mark.slow
def test_metrics_count_live_sessions(server):
    url = server.url.replace("http://", "ws://") + "/v1/sessions"
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "prompt": "digit 2"}))
        while isinstance(message := ws.recv(timeout=30), bytes) or \
                json.loads(message)["type"] != "frame":
            pass
        during = scrape(server.url)
        assert during["pomstream_live_viewers"] == 1
        assert during['pomstream_active_jobs{kind="session"}'] == 1
        assert during['pomstream_frames_generated_total{kind="session"}'] >= 1
    wait_for(lambda: scrape(server.url)['pomstream_active_jobs{kind="session"}'] == 0, 30,
             what="the session to detach")
    assert scrape(server.url)["pomstream_live_viewers"] == 0
