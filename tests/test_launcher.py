"""app.py answers at once (issue 23): a status page (explorer/app/starting.py) serves the app's address with the
loading progress until the model, its calibration and the page are ready, then the app takes the address over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from explorer.app.starting import StartingPage

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_status_page_says_what_is_loading_and_frees_its_port():
    page = StartingPage("127.0.0.1", 0, "org/some-model").start()
    url = f"http://127.0.0.1:{page.port}/"
    try:
        code, body = _get(url)
        assert code == 503 and "org/some-model" in body and "starting" in body and 'http-equiv="refresh"' in body
        page.say(0.4, "calibrating <the set>")
        code, body = _get(url + "any/path?x=1")
        assert code == 503 and "calibrating &lt;the set&gt;" in body and 'value="40"' in body  # escaped, in percent
        status = json.loads(_get(url + "startup.json")[1])
        assert status["ready"] is False and status["fraction"] == 0.4 and status["message"] == "calibrating <the set>"
        assert [s["message"] for s in status["steps"]] == ["starting", "calibrating <the set>"]
    finally:
        page.stop()
    with socket.socket() as sock:  # the port is free again for the app (a server reuses the address, as uvicorn does)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", page.port))
        sock.listen()


def test_a_page_cannot_start_on_a_port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(OSError):
            StartingPage("127.0.0.1", sock.getsockname()[1], "m")


@pytest.mark.slow  # a second process that loads a model
def test_app_py_answers_while_loading_then_serves_the_app(tiny_model_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "SGE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "app.py", "--model", str(tiny_model_dir("llava")), "--device", "cpu",
                                "--calibration-limit", "4", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    statuses: list[dict] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()[-3000:]
            try:
                code, body = _get(url + "startup.json")
            except OSError:  # not bound yet, or between the status page and the app
                time.sleep(0.05)
                continue
            if code != 503:  # the app's own server answers (it has no such route): the status page handed over
                break
            statuses.append(json.loads(body))
            time.sleep(0.05)
        assert statuses, "the address never answered before the app was ready"
        assert statuses[0]["message"] in ("starting", "importing torch and Gradio")  # up before the heavy imports
        steps = [step["message"] for step in statuses[-1]["steps"]]
        assert steps[:2] == ["starting", "importing torch and Gradio"] and steps[-1] == "building the page"
        assert any(m.startswith("loading ") for m in steps) and any(m.startswith("calibrating") for m in steps)
        fractions = [step["fraction"] for step in statuses[-1]["steps"]]
        assert fractions == sorted(fractions)  # progress only moves forward
        code, body = _get(url)
        assert code == 200 and "Safety Geometry Explorer" in body  # the real page
    finally:
        process.terminate()
        process.wait(timeout=30)
