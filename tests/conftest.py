"""Shared fixtures: tiny random-weight models of real families, built once per session, offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tests never write into the user's real cache (~/.cache/safety-geometry-explorer).
os.environ.setdefault("SGE_CACHE_DIR", tempfile.mkdtemp(prefix="sge-test-cache-"))

from tiny_models import build_tiny_model  # noqa: E402


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
def tiny_llava(tiny_model_dir):
    from explorer.models import load_model

    return load_model(str(tiny_model_dir("llava")), device="cpu")


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo checkpoint, loaded once per test session through the engine (CPU, float32)."""
    from explorer.demo_model.measure import load_demo
    from explorer.models import DEMO_MODEL_DIR

    return load_demo(DEMO_MODEL_DIR)
