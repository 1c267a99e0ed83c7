"""What a visitor sees while the app starts: a page that answers within a second of `python app.py`, saying what is
loading and how far it is, until the real page takes over the same address.

Why: importing Gradio and torch, loading a model and capturing its calibration take from seconds (the demo, warm
cache) to minutes (a 7B model, cold cache); a page that does not answer looks like a broken link. This server is
the standard library only (nothing of torch, Gradio or the rest of explorer is imported), so it is up before the
heavy imports begin. It answers every path with 503 and `Retry-After: 1`, so a script or health check knows the app
is not ready yet, while a browser shows the status and reloads itself; `/startup.json` gives the same as JSON.
"""

from __future__ import annotations

import html
import http.server
import json
import threading
import time
from typing import Any

__all__ = ["StartingPage"]

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>Safety Geometry Explorer: starting</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}}
progress{{width:100%;height:1.2em}} .log{{color:#555;font-size:.92em}}</style></head>
<body><h1>Safety Geometry Explorer is starting</h1>
<p>Loading <b>{model}</b>: {message} ({elapsed:.0f} s so far).</p>
<progress value="{percent}" max="100">{percent}%</progress>
<p>The page opens here by itself when the model and its calibration are ready; nothing needs to be clicked.</p>
<div class="log">{log}</div></body></html>
"""


class StartingPage:
    """A status page on (host, port) from `start()` until `stop()`, fed by `say(fraction, message)`."""

    def __init__(self, host: str, port: int, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._steps: list[tuple[float, str, float]] = [(0.0, "starting", 0.0)]  # (fraction, message, seconds)
        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the standard library's name for the GET handler
                body, kind = page.render(self.path)
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # no access log on the console
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="starting-page", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> StartingPage:
        self._thread.start()
        return self

    def say(self, fraction: float, message: str) -> None:
        """Record a step (`fraction` of the way, 0-1): shown to the next request."""
        with self._lock:
            self._steps.append((min(max(float(fraction), 0.0), 1.0), str(message), time.monotonic() - self._started))

    def status(self) -> dict[str, Any]:
        with self._lock:
            fraction, message, _ = self._steps[-1]
            steps = [{"fraction": f, "message": m, "seconds": round(t, 1)} for f, m, t in self._steps]
        return {"ready": False, "model": self.model, "fraction": fraction, "message": message,
                "seconds": round(time.monotonic() - self._started, 1), "steps": steps}

    def render(self, path: str) -> tuple[bytes, str]:
        """The body and content type for `path`: `/startup.json`, else the HTML page."""
        status = self.status()
        if path.split("?")[0] == "/startup.json":
            return json.dumps(status).encode(), "application/json"
        log = "<br>".join(html.escape(f"{s['seconds']:5.1f} s  {s['message']}") for s in status["steps"][1:])
        return _PAGE.format(model=html.escape(self.model), message=html.escape(status["message"]),
                            elapsed=status["seconds"], percent=round(100 * status["fraction"]), log=log).encode(), \
            "text/html; charset=utf-8"

    def stop(self) -> None:
        """Stop answering and free the port (the real app binds it next)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
