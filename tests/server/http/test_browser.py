"""The viewer page in a real browser: headless Chromium (Debian's package, driven by
Playwright with ``executable_path``; no browser download) opens ``/``, plays a video and a
live session through Media Source Extensions, resumes the session (a late join: its media
time starts at frame k / fps) and watches a fork."""

from __future__ import annotations

import os

import pytest

from tests.support.servers import shared_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")

# what the page's <video> shows: time, decoded frames, and a canvas read of the picture
PROBE = """() => {
  const v = document.getElementById("video");
  const q = v.getVideoPlaybackQuality();
  const out = {time: v.currentTime, decoded: q.totalVideoFrames, width: v.videoWidth,
               spread: 0, state: window.pomstream.status, errors: window.pomstream.errors};
  if (v.videoWidth) {
    const c = document.createElement("canvas");
    c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext("2d");
    g.drawImage(v, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let lo = 255, hi = 0;
    for (let i = 0; i < d.length; i += 4) {
      const y = (d[i] + d[i + 1] + d[i + 2]) / 3;
      lo = Math.min(lo, y); hi = Math.max(hi, y);
    }
    out.spread = hi - lo;
  }
  return out;
}"""


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    yield from shared_server(redis_server, tiny_model_file, tmp_path_factory, "browser")


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        page.goto(server.url + "/")
        yield page
        browser.close()


def assert_playing(page, min_frames: int) -> dict:
    """Time advances, decoded frames grow and the picture is not blank."""
    page.wait_for_function(f"window.pomstream.frames >= {min_frames}", timeout=60_000)
    page.wait_for_function("document.getElementById('video').currentTime > 0 && "
                           "document.getElementById('video').videoWidth > 0", timeout=30_000)
    first = page.evaluate(PROBE)
    page.wait_for_timeout(1500)
    later = page.evaluate(PROBE)
    assert later["time"] > first["time"], (first, later)
    assert later["decoded"] > first["decoded"] > 0, (first, later)
    assert later["width"] == 16 and later["spread"] > 0, later
    assert not later["errors"], later
    return later


@pytest.mark.slow
def test_page_plays_a_video(page):
    assert page.evaluate("MediaSource.isTypeSupported('video/mp4; codecs=\"avc1.64000a\"')")
    page.fill("#prompt", "digits 3 and 7")
    page.fill("#seconds", "6")
    page.click("#start")
    assert_playing(page, 8)
    page.wait_for_function("window.pomstream.status === 'completed'", timeout=60_000)


@pytest.mark.slow
def test_page_plays_resumes_and_forks_a_live_session(page):
    page.check("#live")
    page.fill("#prompt", "digit 5")
    page.click("#start")
    page.wait_for_function("window.pomstream.sessionId !== null", timeout=30_000)
    assert_playing(page, 8)
    shown = page.evaluate("() => [window.pomstream.fps, window.pomstream.latencyMs]")
    assert shown[0] > 0 and shown[1] is not None and shown[1] >= 0
    sid = page.evaluate("window.pomstream.sessionId")

    # resume the same session by id: a late join whose media time starts at frame k / fps
    page.fill("#sid", sid)
    page.click("#resume")
    page.wait_for_function("window.pomstream.status.startsWith('resumed') || "
                           "window.pomstream.status.startsWith('live')", timeout=30_000)
    later = assert_playing(page, 4)
    assert later["time"] > 1.0, "a resumed session plays on from where it was"

    page.click("#fork")
    page.wait_for_function("window.pomstream.forkId !== null", timeout=30_000)
    fork = page.evaluate("window.pomstream.forkId")
    page.click("#stop")
    page.wait_for_function("window.pomstream.status === 'completed'", timeout=30_000)

    page.fill("#sid", fork)
    page.click("#resume")
    page.wait_for_function(f"window.pomstream.sessionId === '{fork}'", timeout=30_000)
    assert_playing(page, 4)
    page.click("#stop")
    page.wait_for_function("window.pomstream.status === 'completed'", timeout=30_000)
