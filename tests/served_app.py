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
        import ctypes
        import ctypes.util
        import gc

        gc.collect()
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_objects() -> int:
    """The objects Python's garbage collector tracks now (containers: dicts, lists, instances), after a collection:
    an exact count where RSS is noisy, so a leak of Python objects shows after a few requests."""
    import gc

    gc.collect()
    return len(gc.get_objects())


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


def raw_call(url: str, api: str, data: list, headers: dict | None = None, timeout: float = 300,
             session_hash: str | None = None) -> str:
    """One API call over plain HTTP (raw JSON values, any headers; gradio_client would shape them), in a session of
    its own unless `session_hash` names one: the event stream's text."""
    import httpx

    payload = {"data": data} if session_hash is None else {"data": data, "session_hash": session_hash}
    body = json.dumps(payload)  # NaN and ±inf as JavaScript writes them (httpx's json= refuses them)
    posted = httpx.post(f"{url}gradio_api/call/{api}", content=body,
                        headers={"Content-Type": "application/json", **(headers or {})}, timeout=60)
    posted.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{posted.json()['event_id']}", headers=headers or {},
                      timeout=timeout) as reply:
        return "".join(reply.iter_text())


def upload(url: str, name: str, data: bytes) -> dict:
    """Upload bytes as Gradio's page does; → the FileData payload an event takes."""
    import httpx

    reply = httpx.post(f"{url}gradio_api/upload", files=[("files", (name, data))], timeout=60)
    reply.raise_for_status()
    path = reply.json()[0]
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
