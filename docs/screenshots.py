"""Screenshots of the viewer page for the README, with the bundled demo model.

    ./dev serve &            # the demo model on 127.0.0.1:8000, no API key
    .venv/bin/python docs/screenshots.py [--url http://127.0.0.1:8000]

Makes a video ("digits 3 and 7"), waits for it in the gallery, plays it, starts a live
session, then saves docs/images/page-desktop.png and page-phone.png (Debian's chromium,
driven by Playwright, as in tests/server/http/test_browser.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parent / "images"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(args.url + "/")
        page.fill("#prompt", "digits 3 and 7")
        page.fill("#seconds", "4")
        page.click("#start")
        page.wait_for_function("window.pomstream.status === 'completed'", timeout=120_000)
        page.wait_for_function("document.querySelector('#gallery li img')?.naturalWidth > 0",
                               timeout=30_000)
        page.check("#live")
        page.fill("#prompt", "digit 7")
        page.click("#start")
        page.wait_for_function("window.pomstream.frames >= 24", timeout=120_000)
        page.screenshot(path=str(OUT / "page-desktop.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(500)
        page.screenshot(path=str(OUT / "page-phone.png"), full_page=False)
        page.click("#stop")
        browser.close()


if __name__ == "__main__":
    main()
