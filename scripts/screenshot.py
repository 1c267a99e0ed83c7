"""Take the README's screenshot (docs/screenshot.png): the app on the built-in demo model after "Show the collapse".

    .venv/bin/python scripts/screenshot.py [--out docs/screenshot.png] [--model demo]

Why a script: the picture goes stale whenever the page changes (a renamed mode, a new control), and a picture
taken by hand cannot be retaken the same way. This one serves `app.py`'s own app in this process (`build_app` on
`AppState`, with the settings `python app.py` would use, on a free loopback port), waits until the start-up
warm-up has compiled UMAP (so the 2-D map is the UMAP one the page shows by default), opens the page in the
system's Chromium (Playwright, `/usr/bin/chromium`; no browser is downloaded), clicks "Show the collapse", waits
for its story, its three plots and both answers, and saves the whole page. It loads the model and compiles UMAP,
so it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 1000}  # wide enough for the two-column layout, as the README shows it
#: The page is done when the story reaches its last step, the three figures are drawn and both answers are judged.
STORY_DONE = "(document.querySelector('#story')?.innerText || '').includes('with ReGap')"
PLOTS_DRAWN = "document.querySelectorAll('[data-testid=\"plotly\"] .main-svg').length >= 3"
ANSWERS_JUDGED = """() => ['#plain-info', '#corrected-info'].every(id => {
    const text = document.querySelector(id)?.innerText || '';
    return /refused|complied|broken/.test(text) && !text.includes('generating');
})"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from explorer.app.model_options import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)  # the app's own model options (default: the built-in demo)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each step (default 600)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: `bash scripts/setup.sh` installs it (as root), or "
                         "`sudo apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    from app import settings_from_args
    from explorer.app.page import LAUNCH_OPTIONS, build_app
    from explorer.app.ui_session import AppState

    # The settings `python app.py` would use for these model options on a loopback-only server.
    settings = settings_from_args(argparse.Namespace(**vars(args), host="127.0.0.1", share=False,
                                                     allow_model_switch=False, allowed_models=""))
    started = time.perf_counter()
    print(f"loading {settings.model} and calibrating (cached on disk after the first run)…", flush=True)
    state = AppState.start(settings)
    if not state.umap_ready.wait(args.timeout):
        print(f"UMAP not compiled after {args.timeout:.0f} s: the map will be PCA, and the page says so", flush=True)
    port = _free_port()
    app = build_app(state)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run"])
            try:
                page = browser.new_context(viewport=VIEWPORT).new_page()
                page.set_default_timeout(args.timeout * 1000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#prompt textarea").wait_for()
                page.locator("#collapse-btn").click()
                page.wait_for_function(STORY_DONE)
                page.wait_for_function(PLOTS_DRAWN)
                page.wait_for_function(ANSWERS_JUDGED)
                page.wait_for_timeout(1500)  # Plotly's last transition after the figures arrive
                story = page.locator("#story").inner_text()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
            finally:
                browser.close()
    finally:
        app.close()
    print(story)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s from start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
