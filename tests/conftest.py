"""Shared fixtures: tiny random-weight models of real families, built once per session, offline."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: pytest-xdist (the suite runs with `-n auto`, pyproject.toml) starts one worker per core; each worker's torch then
#: gets its share of the cores, not all of them, or the workers' threads fight over the same cores. Set before torch
#: is imported anywhere in the worker; the interpreters a test starts inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tests never write into the user's real cache (~/.cache/safety-geometry-explorer). The process that makes the
# temporary cache removes it when it exits (it holds the pinned base's ~1 GB); xdist's workers inherit it and share it.
if "SGE_CACHE_DIR" not in os.environ:
    os.environ["SGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="sge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SGE_CACHE_DIR"], ignore_errors=True)

from file_order import (  # noqa: F401
    pytest_addoption,
    pytest_configure,
    recorded_seconds,
    slowest_files_first,
)
from tiny_models import build_tiny_model

#: Session fixtures that load the shipped demo checkpoint (`running_app` serves it whenever it is built): a test
#: that uses one is marked `checkpoint` and `slow`, so `-m "not slow"` never waits for the demo to load.
CHECKPOINT_FIXTURES = frozenset({"demo_model", "demo_runs", "running_app"})
#: The most xdist workers `-n auto` starts: each loads torch, transformers and Gradio (1.3-2 GB resident measured).
MAX_WORKERS = 4


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks from what a test uses, not from memory: the demo-loading fixtures make it `checkpoint` + `slow`; a
    `checkpoint` test is always `slow` too. Then the slowest files first (tests/file_order.py)."""
    slowest_files_first(items, recorded_seconds())
    for item in items:
        if CHECKPOINT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.checkpoint)
        if item.get_closest_marker("checkpoint") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """`tiny_model_dir(family)` → folder of a tiny model of that family (built on first use)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(family) / "model")
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_eval_run(tiny_model_dir, tmp_path_factory):
    """One finished `eval` on the tiny LLaVA (text + image; off, fixed, adaptive; 3 items) → (folder, its args):
    the CLI's tests read and resume it, the app's compare its metrics.json schema with the export's."""
    from explorer.app.cli import main

    out = tmp_path_factory.mktemp("eval") / "run"
    cache = tmp_path_factory.mktemp("cache")
    args = ["eval", "--model", str(tiny_model_dir("llava")), "--device", "cpu", "--modalities", "text,image",
            "--regap", "off,fixed,adaptive", "--strength", "1.5", "--rule", "linear", "--calibration-limit", "6", "--limit", "3",
            "--max-new-tokens", "4", "--cache-dir", str(cache), "--out", str(out)]
    assert main(args) == 0
    return out, args


@pytest.fixture(scope="session")
def tiny_llava(tiny_model_dir):
    from explorer.model.loading import load_model

    return load_model(str(tiny_model_dir("llava")), device="cpu")


@pytest.fixture(scope="session")
def tiny_calibration(tiny_llava, tmp_path_factory):
    """The tiny LLaVA calibrated once per session on 3 builtin requests per label, as text and image (read-only:
    tests that need another calibration build their own)."""
    from explorer.evaluation.calibration import calibrate, load_calibration_items

    return calibrate(tiny_llava, load_calibration_items("builtin", limit=3), ["text", "image"],
                     cache_dir=tmp_path_factory.mktemp("tiny-calibration"))


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo checkpoint, loaded once per test session through the engine (CPU, float32)."""
    from explorer.demo_model.measure import load_demo
    from explorer.model.loading import DEMO_MODEL_DIR

    return load_demo(DEMO_MODEL_DIR)


@pytest.fixture(scope="session")
def running_app(tiny_model_dir, tmp_path_factory):
    """(AppState, URL) of `app.py`'s app serving on a free loopback port: the demo model when it is built, else a
    tiny llava; a small calibration. One server per test session, shared by the client and browser tests."""
    import socket

    from explorer.app.page import LAUNCH_OPTIONS, build_app
    from explorer.app.ui_session import AppSettings, AppState
    from explorer.model.loading import DEMO_MODEL_DIR

    cache = tmp_path_factory.mktemp("sge-app-cache")
    model = "demo" if (DEMO_MODEL_DIR / "manifest.json").is_file() else str(tiny_model_dir("llava"))
    settings = AppSettings(model=model, device="cpu", calibration_limit=8, cache_dir=cache, model_switch="any")
    state = AppState.start(settings, warm_up=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_app(state)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    yield state, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory):
    """Two finished demo eval runs with different settings (α 0.5 vs 3 for `fixed`) and one on fewer items, under
    one runs root: what `compare` and the app's run viewer read. → (root, [run_a, run_b, run_small])."""
    from explorer.app.cli import main

    root = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.mktemp("runs-cache")
    common = ["eval", "--model", "demo", "--device", "cpu", "--modalities", "text,image", "--regap", "off,fixed",
              "--calibration-limit", "12", "--max-new-tokens", "12", "--batch-size", "16", "--cache-dir", str(cache)]
    runs = []
    for name, strength, limit in (("gentle", "0.5", "8"), ("strong", "3", "8"), ("small", "3", "3")):
        out = root / name
        assert main([*common, "--strength", strength, "--limit", limit, "--out", str(out)]) == 0
        runs.append(out)
    return root, runs
