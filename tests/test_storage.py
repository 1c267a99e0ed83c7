"""Tests for explorer.core.storage: the cache root and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from explorer.core.storage import (
    atomic_path,
    cache_root,
    resolve_cache_dir,
    write_atomic,
)


def test_cache_root_honours_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SGE_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere" and resolve_cache_dir("default") == tmp_path / "elsewhere"
    monkeypatch.delenv("SGE_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "safety-geometry-explorer"
    assert resolve_cache_dir(None) is None and resolve_cache_dir(tmp_path) == tmp_path


def test_audio_render_cache_lives_under_the_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from explorer.inputs import speech

    monkeypatch.setenv("SGE_CACHE_DIR", str(tmp_path))
    assert speech._default_cache_dir() == tmp_path / "audio"


def test_write_atomic_replaces_whole_files_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of a new file")
            raise RuntimeError("interrupted")
    assert target.read_text() == "second"  # the old file, untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temporary left behind
