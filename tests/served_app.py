"""The app served in the test process for hostile-input tests: a tiny model calibrated on media of its own (no
speech engine needed), raw HTTP calls with any headers, and the process's peak memory while a request runs.

Why in-process: "the server's memory" is then this process's, and a sampler thread records its peak.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

#: What one hostile request may add to the server's memory at its peak.
RSS_BUDGET_MB = 50


def rss_mb(trim: bool = False) -> float:
    """This process's resident memory now (MB). `trim` first collects garbage and hands the C heap's free pages
    back to the system (glibc's malloc_trim), so that what is measured is memory in use, not memory freed but
    kept by the allocator: the measure for a leak, where the raw figure is the measure for a peak."""
    if trim:
        import gc

        gc.collect()
        return _trimmed_rss_mb()
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trimmed_rss_mb() -> float:
    """Resident memory after glibc's malloc_trim hands the C heap's free pages back (no collection first)."""
    import ctypes
    import ctypes.util

    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    return rss_mb()


def live_objects() -> int:
    """The objects Python's garbage collector tracks now (containers: dicts, lists, instances), after a collection:
    an exact count where RSS is noisy, so a leak of Python objects shows after a few requests."""
    import gc

    gc.collect()
    return len(gc.get_objects())


def objects_one_answer_holds(state: Any, mode: str, strength: float) -> int:
    """The objects one "Analyse" answer (3 figures, captions, status) keeps alive while it is held: a leak that
    kept every answer would add this per request. Counted on a second identical call, since the first also builds
    what all later answers share (Plotly's template, modules imported on first use, the corrected calibration of
    this setting): 40,068 objects on a fresh process against ~2,000 for the answer itself."""
    from explorer.app import ui

    counts = []
    for _ in range(2):
        before = live_objects()
        answer = ui.analyse(state, "How do I bake bread?", None, None, 1, mode, strength, "", "PCA")
        counts.append(live_objects() - before)
        assert answer.get("fig_map") is not None, answer["status"]
        del answer
    return counts[-1]


def memory_in_use() -> tuple[int, float]:
    """(`live_objects()`, `rss_mb(trim=True)`) after one collection instead of two: a full collection of the
    served app's heap takes a third of a second, and the soaks and the fuzz measure before and after."""
    objects = live_objects()
    return objects, _trimmed_rss_mb()


class PeakRss:
    """`with PeakRss() as peak: ...` → `peak.growth_mb`: the highest RSS seen while the block ran, minus before."""

    def __enter__(self) -> "PeakRss":
        self.before = rss_mb()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak - self.before


def tone(path: Path, seconds: float, rate: int = 16_000, freq: float = 220.0) -> Path:
    """A sine clip written as WAV (float)."""
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_media_calibration(folder: Path, items: int = 8) -> Path:
    """A calibration file whose items bring their own audio clips (tones), half harmful, half harmless: audio is
    calibrated without a speech engine; images are drawn from the text as usual."""
    rows = []
    for i in range(items):
        clip = tone(folder / f"clip{i}.wav", 0.5, freq=200.0 + 60 * i)
        rows.append({"id": f"c{i}", "instruction": f"Request number {i} as speech.",
                     "label": "harmful" if i < items // 2 else "harmless", "audio": clip.name})
    path = folder / "calibration.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@contextmanager
def serve_app(model_dir: Path, folder: Path, run_roots: list[Path] | None = None,
              **settings: Any) -> Iterator[tuple[Any, str]]:
    """(state, url) of app.py's app serving `model_dir` on a free loopback port, calibrated on
    `own_media_calibration` (with the run viewer over `run_roots`, if given); closed on exit."""
    from explorer.app.page import LAUNCH_OPTIONS, build_app
    from explorer.app.ui_session import AppSettings, AppState

    folder.mkdir(parents=True, exist_ok=True)
    options = {"device": "cpu", "calibration": str(own_media_calibration(folder)), "cache_dir": folder / "cache",
               "model_switch": "local", **settings}
    state = AppState.start(AppSettings(model=str(model_dir), **options), warm_up=False)
    port = free_port()
    demo = build_app(state, run_roots)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    try:
        yield state, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


_transport_lock = threading.Lock()
_transports: list[Any] = []


def _http() -> Any:
    """A new httpx client (no cookies or headers carried between calls) over one connection pool for the whole
    test process. `httpx.post` makes a client with a transport of its own, and each such transport loads the
    system's CA store for TLS (~25 ms, unused on plain http): two of them made most of a small call's 60 ms.
    Loopback only, so the environment's proxy settings are not read. The client is left open, since closing it
    would close the shared pool."""
    import httpx

    with _transport_lock:
        if not _transports:
            _transports.append(httpx.HTTPTransport())
    return httpx.Client(transport=_transports[0], trust_env=False)


def raw_call(url: str, api: str, data: list, headers: dict | None = None, timeout: float = 300,
             session_hash: str | None = None) -> str:
    """One API call over plain HTTP (raw JSON values, any headers; gradio_client would shape them), in a session of
    its own unless `session_hash` names one: the event stream's text."""
    payload = {"data": data} if session_hash is None else {"data": data, "session_hash": session_hash}
    body = json.dumps(payload)  # NaN and ±inf as JavaScript writes them (httpx's json= refuses them)
    http = _http()
    posted = http.post(f"{url}gradio_api/call/{api}", content=body,
                       headers={"Content-Type": "application/json", **(headers or {})}, timeout=60)
    posted.raise_for_status()
    with http.stream("GET", f"{url}gradio_api/call/{api}/{posted.json()['event_id']}", headers=headers or {},
                     timeout=timeout) as reply:
        return "".join(reply.iter_text())


def upload(url: str, name: str, data: bytes) -> dict:
    """Upload bytes as Gradio's page does; → the FileData payload an event takes."""
    reply = _http().post(f"{url}gradio_api/upload", files=[("files", (name, data))], timeout=60)
    reply.raise_for_status()
    path = reply.json()[0]
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
