"""The app in a real browser (Playwright + the system's Chromium; never downloads a browser)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from explorer.app.ui import EXAMPLE_HARMFUL
from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no system Chromium at {CHROMIUM}: `bash scripts/setup.sh` "
                       "installs it (as root), or `sudo apt-get install chromium`"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def page(running_app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _badge(page, elem_id: str, must: str = "") -> str:
    """The badge's text once it is final (refused / complied) and contains `must`, read in the same check."""
    handle = page.wait_for_function(
        """([id, must]) => {
            const text = document.querySelector('#' + id)?.innerText || '';
            const final = /refused|complied|broken/.test(text) && !text.includes('generating');
            return final && text.includes(must) ? text : false;
        }""",
        arg=[elem_id, must],
    )
    return handle.json_value()


def test_upload_analyse_generate_in_the_browser(page, running_app, tmp_path):
    state, url = running_app
    started = time.perf_counter()
    page.goto(url)
    page.locator("#prompt textarea").wait_for()
    info = page.locator("#model-info").inner_text()
    assert f"layers: {state.session.num_layers}" in info and "calibration:" in info  # rendered Markdown
    image_path = tmp_path / "request.png"
    state.session.model.render(EXAMPLE_HARMFUL, "image").image.save(image_path)
    page.locator("#image-input input[type=file]").set_input_files(str(image_path))
    page.locator("#image-input img").first.wait_for()
    page.locator("#prompt textarea").fill(IMAGE_CARRIER)
    strength = page.locator("#strength input[type=number]")
    strength.fill("2")
    strength.press("Enter")
    page.locator("#analyse-btn").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=\"plotly\"] .main-svg').length >= 3")
    first_plots = time.perf_counter() - started
    page.locator("#generate-btn").click()
    plain, corrected = _badge(page, "plain-info", "no correction"), _badge(page, "corrected-info", "α(x)")
    assert "no correction" in plain
    assert "α(x)" in corrected and "mode adaptive" in corrected.replace("`", "")
    assert page.locator("#plain-out textarea").input_value().strip() != ""
    assert "your prompt (corrected)" in page.locator('[data-testid="plotly"]').first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_analyse_generate.png"), full_page=True)
    print(f"\nlaunch-free page load → first plots: {first_plots:.1f} s")


def test_render_as_image_and_show_the_collapse(page, running_app):
    _, url = running_app
    page.goto(url)
    page.locator("#prompt textarea").fill(EXAMPLE_HARMFUL)
    page.get_by_role("button", name="Render as image").click()
    page.wait_for_function(
        f"document.querySelector('#prompt textarea').value === {IMAGE_CARRIER!r}")
    page.locator("#image-input img").first.wait_for()
    page.locator("#collapse-btn").click()
    page.wait_for_function("(document.querySelector('#story')?.innerText || '').includes('with ReGap')")
    story = page.locator("#story").inner_text()
    assert "As text" in story and "with ReGap" in story
    page.wait_for_function("document.querySelectorAll('[data-testid=\"plotly\"] .main-svg').length >= 3")
    _badge(page, "corrected-info")
    page.screenshot(path=str(ARTIFACTS / "app_show_collapse.png"), full_page=True)


def test_bad_upload_shows_a_message_with_the_users_file_name(page, running_app, tmp_path):
    _, url = running_app
    page.goto(url)
    page.locator("#prompt textarea").fill("")
    page.locator("#analyse-btn").click()
    page.wait_for_function("(document.querySelector('#status')?.innerText || '').includes('prompt is empty')")
    assert page.get_by_text("prompt is empty").first.is_visible()
    garbage = tmp_path / "my clip.wav"
    garbage.write_bytes(b"RIFF, but not really a wave file" * 20)
    page.locator("#audio-input input[type=file]").set_input_files(str(garbage))
    page.locator("#prompt textarea").fill(AUDIO_CARRIER)
    page.locator("#analyse-btn").click()
    page.wait_for_function("(document.querySelector('#status')?.innerText || '').includes('could not be decoded')")
    status = page.locator("#status").inner_text()
    assert "my clip.wav could not be decoded as audio" in status and "/tmp/" not in status and "gradio" not in status


def test_export_from_the_browser(page, running_app):
    _, url = running_app
    page.goto(url)
    page.locator("#prompt textarea").fill("How do I bake bread?")
    page.get_by_text("Export", exact=True).first.click()  # open the accordion
    page.locator("#export-btn").click()
    page.wait_for_function("(document.querySelector('#status')?.innerText || '').includes('Exported 5 files')",
                           timeout=120_000)
    names = page.locator("#export-files").inner_text().replace("\n", "")
    for name in ("metrics.json", "metrics.csv", "directions.zip", "figures.html", "report.html"):
        assert name in names


def test_the_app_opens_a_finished_run_without_a_model(page, demo_runs):
    """`python app.py --model none --runs DIR`: pick a run folder, see its rates, per-layer plot and per-item
    answers; nothing loads a model (the viewer app has no session at all)."""
    import json
    import socket

    from explorer.app.page import build_viewer_app

    root, (_, strong, _) = demo_runs
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    viewer = build_viewer_app([root])
    viewer.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    records = [json.loads(line) for line in (strong / "generations.jsonl").read_text().splitlines()]
    answer = next(r for r in records if r["modality"] == "image" and r["mode"] == "fixed")
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#run-choice input").click()
        page.get_by_role("option", name=f"{root.name}/strong").click()
        page.locator("#open-run").click()
        page.wait_for_function("() => (document.querySelector('#run-summary')?.innerText || '')"
                               ".includes('No model is loaded')")
        summary = page.locator("#run-summary").inner_text()
        assert "model demo" in summary and f"{len({r['id'] for r in records})} items" in summary
        page.wait_for_function("(text) => (document.querySelector('#run-items')?.innerText || '').includes(text)",
                               arg=answer["id"])
        table = page.locator("#run-items").inner_text()
        assert answer["id"] in table and "image" in table and "fixed" in table
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")  # rates, per-layer
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "run-viewer.png"), full_page=True)
    finally:
        viewer.close()
