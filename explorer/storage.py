"""Where the explorer keeps files, and the one way it writes them.

Why atomic writes everywhere: runs are long and get interrupted (Ctrl-C, a killed job, a full disk). Every file
is written to a temporary name beside its destination and moved into place with `os.replace`, so a reader sees
the old file or the new one, never half of one. Caches live under one root, `SGE_CACHE_DIR` when set (read at
call time, so tests and users can point it elsewhere), else ``~/.cache/safety-geometry-explorer``.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "a" / "note.txt"
>>> write_atomic(target, "hello")
>>> target.read_text()
'hello'
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["CacheDir", "atomic_path", "cache_root", "resolve_cache_dir", "write_atomic"]

_CACHE_ENV = "SGE_CACHE_DIR"


def cache_root() -> Path:
    """The cache folder: `$SGE_CACHE_DIR`, else ~/.cache/safety-geometry-explorer (not created here)."""
    configured = os.environ.get(_CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "safety-geometry-explorer"


#: Where a function may cache: a folder, "default" (`cache_root()` at call time), or None (no cache).
CacheDir = Path | str | None


def resolve_cache_dir(cache_dir: CacheDir) -> Path | None:
    """"default" → `cache_root()`; None → None (caching off); anything else → that folder."""
    if cache_dir is None:
        return None
    if cache_dir == "default":
        return cache_root()
    return Path(cache_dir)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that want a file name (safetensors, soundfile, Plotly): ``with atomic_path(p) as tmp: save(tmp)``.
    The new file's bytes reach the disk (fsync) before the rename, and the rename itself after it (the folder's
    fsync), so a power cut leaves the old file or the whole new one, never an empty file under the final name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".{threading.get_ident()}.tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be read by others too
        _fsync_path(tmp)
        os.replace(tmp, target)
        _fsync_path(target.parent, folder=True)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_path(path: Path, folder: bool = False) -> None:
    """Flush `path`'s data to the disk. A folder is flushed where the system allows it (not on Windows, nor on
    some network filesystems): the rename is then as durable as the filesystem makes it, and the write still
    succeeds."""
    try:
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
        fd = os.open(path, flags)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
