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
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

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


# ------------------------------------------------------------------------------------------------ bounded caches

#: Disk bounds, in bytes, of the caches that grow with use: cache name → (environment variable, default). The
#: variable (a whole number of bytes, read at call time) overrides the default; 0 keeps only the file just written.
#: "corrected": calibration states re-captured with a correction on (one file per media modality and setting; the
#: builtin split on a 7B model is 220 items × 32 layers × 4096 × 4 B ≈ 115 MB, so 512 MiB keeps the last 4 settings
#: of one medium). "audio": spoken requests (float32 WAV, ≈ 64 KB per second; the 220-item split ≈ 60 MB per speech
#: style, so 256 MiB keeps the calibration and evaluation splits of a style and visitors' clips besides).
CACHE_BOUNDS: dict[str, tuple[str, int]] = {
    "corrected": ("SGE_CORRECTED_CACHE_BYTES", 512 * 2**20),
    "audio": ("SGE_SPEECH_CACHE_BYTES", 256 * 2**20),
}
_STALE_TEMP_S = 3600.0  # an atomic write's temporary file this old was left by a killed process


def cache_bound(name: str) -> int:
    """The byte bound of cache `name` (a key of `CACHE_BOUNDS`): its environment variable, else the default.

    >>> cache_bound("corrected") == CACHE_BOUNDS["corrected"][1] or "SGE_CORRECTED_CACHE_BYTES" in os.environ
    True
    """
    if name not in CACHE_BOUNDS:
        raise ValueError(f"no cache named {name!r}; choose one of {', '.join(CACHE_BOUNDS)}")
    variable, default = CACHE_BOUNDS[name]
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"${variable} must be a whole number of bytes ≥ 0 (e.g. {default} for the default); got {raw!r}")
    return value


def mark_used(path: str | os.PathLike[str]) -> None:
    """Stamp a cache file as used now (its mtime), so `prune_cache` keeps it longer. File systems mounted noatime
    never update the access time on a read, so a cache hit says so itself. A vanished file is not an error."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune_cache(folder: str | os.PathLike[str], max_bytes: int, keep: Iterable[str | os.PathLike[str]] = (),
                pattern: str = "*") -> list[Path]:
    """Remove the least recently used files matching `pattern` under `folder` (recursively) until those left total at
    most `max_bytes`; never a file in `keep` (e.g. the one just written), so they may exceed the bound by that much.
    → the files removed, least recently used first.

    "Used" is the later of a file's access and modification times (`mark_used` sets both). Temporary files of
    writes in progress (`atomic_path`'s dot-names) are neither counted nor removed, unless older than an hour (left
    by a killed process). Safe to run from several threads or processes at once: a file another pruner removed first
    is skipped; a reader that loses a file to a pruner finds no cache entry and recomputes it.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for age, name in enumerate(["new", "mid", "old"]):
    ...     _ = (folder / name).write_bytes(b"x" * 10)
    ...     os.utime(folder / name, (1e9 - age, 1e9 - age))
    >>> [p.name for p in prune_cache(folder, 15)]
    ['old', 'mid']
    """
    root = Path(folder)
    kept = {os.path.abspath(p) for p in keep}
    now = time.time()
    entries: list[tuple[float, int, Path]] = []
    total = 0
    for path in root.rglob(pattern) if root.is_dir() else ():
        try:
            info = path.lstat()
        except OSError:  # removed meanwhile
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        if path.name.startswith("."):
            if path.name.endswith(".tmp") and now - info.st_mtime > _STALE_TEMP_S:
                path.unlink(missing_ok=True)
            continue
        total += info.st_size
        if os.path.abspath(path) not in kept:
            entries.append((max(info.st_atime, info.st_mtime), info.st_size, path))
    removed: list[Path] = []
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        try:
            path.unlink()
        except FileNotFoundError:  # another pruner was first; its size is gone all the same
            pass
        total -= size
        removed.append(path)
    return removed


__all__ += ["CACHE_BOUNDS", "cache_bound", "mark_used", "prune_cache"]
