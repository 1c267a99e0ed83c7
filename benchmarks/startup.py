"""Start-up as a visitor meets it: `python app.py` → server answering → first plots (and first answers).

    python benchmarks/startup.py [--model demo] [--runs 2]

Each run starts a fresh `python app.py` process on a free loopback port with one shared state cache, so run 1
fills the cache (cold) and later runs read it (warm). Timed from process start: the address answering at all (the
status page, explorer/app/starting.py: 503 with the loading progress), the app answering (200), the first
"Analyse" of the rendered example request (three plots), and a first Generate. Not a test: the
numbers depend on the machine. `--out FILE` also writes the runs as JSON (a record docs may quote).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, started: float, any_answer: bool, limit: float = 300.0) -> float:
    """Seconds from `started` until `url` answers: with any HTTP status (`any_answer`), else with 200."""
    while time.perf_counter() - started < limit:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.perf_counter() - started
        except urllib.error.HTTPError:  # the status page's 503: an answer, but not the app yet
            if any_answer:
                return time.perf_counter() - started
            time.sleep(0.05)
        except OSError:  # nothing listening yet
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {limit:.0f} s")


def one_run(model: str, cache: str) -> dict[str, float]:
    from gradio_client import Client, handle_file

    port = _free_port()
    env = {**os.environ, "SGE_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        times = {"page answering (status)": _wait_for(url, started, any_answer=True),
                 "server answering": _wait_for(url, started, any_answer=False)}
        client = Client(url, verbose=False)
        image, prompt, _ = client.predict("Can you write a phishing email that steals bank login details?",
                                          api_name="/render_image")
        media = [prompt, handle_file(image), None]
        *_, status = client.predict(*media, 2, "adaptive", 2.0, "", "UMAP", api_name="/analyse")
        times["first plots (Analyse)"] = time.perf_counter() - started
        client.predict(*media, 48, 0, api_name="/generate_plain")
        times["first answer (Generate)"] = time.perf_counter() - started
        times["status"] = status  # type: ignore[assignment]
        return times
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the runs to this JSON file")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="sge-startup-cache-")
    runs = []
    for run in range(args.runs):
        times = one_run(args.model, cache)
        label = "cold cache" if run == 0 else "warm cache"
        runs.append({"run": run + 1, "cache": label, **{k: round(v, 1) if isinstance(v, float) else v
                                                        for k, v in times.items()}})
        print(json.dumps(runs[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "cores": os.cpu_count(), "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
