"""The viewer page in a real browser: headless Chromium (Debian's package, driven by
Playwright with ``executable_path``; no browser download) opens ``/`` of a server with an
API key (typed into the page once, kept by the browser), shows the model's example
prompts, plays a video and a live session through Media Source Extensions, lists the
video in the gallery with its progress up to 100 %, plays and downloads it from there,
changes a live session's prompt, resumes it (a late join: its media time starts at frame
k / fps), watches a fork, makes a picture by pressing Enter, and logs no console error.
With POMSTREAM_SCREENSHOTS=DIR it saves the page at desktop and phone widths there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pomstream.media.images import decode_all
from tests.support.redis import free_port
from tests.support.servers import ServerProcess

KEY = "browser-key"

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
    proc = ServerProcess("serve", tmp_path_factory.mktemp("browser"), tiny_model_file,
                         redis_url=redis_server.url, port=free_port(),
                         extra=["--prefix", "browser"], env={"POMSTREAM_API_KEYS": KEY})
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def console():
    """Console errors and uncaught exceptions of the page, for every test to check."""
    return []


@pytest.fixture(scope="module")
def page(server, console):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(accept_downloads=True)
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: console.append(str(exc)))
        # the key as a user typed it on an earlier visit: the first requests carry it
        page.add_init_script(f"localStorage.setItem('pomstream.key', '{KEY}')")
        page.goto(server.url + "/")
        yield page
        browser.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("POMSTREAM_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


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
def test_page_shows_the_models_example_prompts(page, console):
    page.wait_for_selector("#examples button")
    examples = page.eval_on_selector_all("#examples button", "bs => bs.map(b => b.textContent)")
    assert "digit 4" in examples
    page.click("#examples button >> nth=0")
    assert page.input_value("#prompt") == examples[0]
    assert console == []


@pytest.mark.slow
def test_page_plays_a_video_and_lists_it_in_the_gallery(page, console, tmp_path):
    assert page.evaluate("MediaSource.isTypeSupported('video/mp4; codecs=\"avc1.64000a\"')")
    page.check("#mode-video")
    page.fill("#prompt", "digits 3 and 7")
    page.fill("#seconds", "6")
    page.click("#start")
    assert_playing(page, 8)
    page.wait_for_function("window.pomstream.status === 'completed'", timeout=60_000)
    video_id = page.evaluate("window.pomstream.videoId")
    item = f"#gallery li[data-id='{video_id}']"
    page.wait_for_function(f"document.querySelector(\"{item} progress\")?.value === 100",
                           timeout=30_000)
    seen = page.evaluate(f"window.pomstream.progressSeen['{video_id}']")
    assert seen[-1] == 100 and seen == sorted(seen), seen  # it only went up, to 100
    assert "completed" in page.text_content(f"{item} .meta")
    page.wait_for_function(f"document.querySelector(\"{item} img\").naturalWidth === 16",
                           timeout=30_000)  # the thumbnail
    screenshot(page, "page-desktop")

    page.click(f"{item} button[data-action=play]")
    page.wait_for_function(f"window.pomstream.playing === '{video_id}' && "
                           "document.getElementById('video').currentTime > 0.3",
                           timeout=30_000)
    with page.expect_download() as info:
        page.click(f"{item} button[data-action=download]")
    path = tmp_path / "download.mp4"
    info.value.save_as(path)
    assert info.value.suggested_filename == f"{video_id}.mp4"
    assert len(decode_all(path.read_bytes())) == 48  # 6 s at 8 frames/s

    page.fill("#prompt", "digit 9")
    page.click(f"{item} button[data-action=remix]")  # a new video, listed first
    page.wait_for_function("document.querySelectorAll('#gallery li').length === 2",
                           timeout=30_000)
    remix = page.get_attribute("#gallery li >> nth=0", "data-id")
    assert remix != video_id and "digit 9" in page.text_content("#gallery li >> nth=0")
    page.click(f"#gallery li[data-id='{remix}'] button[data-action=delete]")
    page.wait_for_function("document.querySelectorAll('#gallery li').length === 1",
                           timeout=30_000)
    assert console == []


@pytest.mark.slow
def test_page_plays_resumes_and_forks_a_live_session(page, console):
    page.check("#live")
    page.fill("#prompt", "digit 5")
    page.click("#start")
    page.wait_for_function("window.pomstream.sessionId !== null", timeout=30_000)
    assert_playing(page, 8)
    shown = page.evaluate("() => [window.pomstream.fps, window.pomstream.latencyMs]")
    assert shown[0] > 0 and shown[1] is not None and shown[1] >= 0
    sid = page.evaluate("window.pomstream.sessionId")
    page.fill("#prompt", "digit 8")
    page.click("#setprompt")
    page.wait_for_function("window.pomstream.prompt === 'digit 8'", timeout=30_000)

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
    assert console == []


@pytest.mark.slow
def test_page_makes_a_picture_from_the_keyboard(page, console):
    page.check("#mode-picture")
    page.fill("#prompt", "digit 2")
    page.press("#prompt", "Enter")  # the form submits: no mouse needed
    page.wait_for_function("document.getElementById('picture').naturalWidth === 16",
                           timeout=60_000)
    assert page.evaluate("window.pomstream.status") == "picture ready"
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing cut off
    screenshot(page, "page-phone")
    page.set_viewport_size({"width": 1280, "height": 720})
    assert console == []
