"""One evaluation at a time per output folder: an OS lock on `DIR/run.lock`.

Why: two `eval`s on one `--out` append to the same record files and interleave their records, and each would
rewrite the other's `generations.jsonl` and `metrics.json`. The lock is `fcntl.flock` on a file inside the folder:
the operating system frees it when the holding process ends, however it ends (`kill -9`, a crash, a pulled plug on
the node), so a killed run never leaves a stale lock that blocks its own resume. The file stays (removing it
would let two processes lock two different files of one name); it holds the last holder's pid, host and start
time, which the refusal quotes.

In a data-parallel run (torchrun) rank 0 alone takes the lock, for all of its run's ranks, and tells them the
verdict, so every rank of a second run stops at once with the same message. Taking the lock again in a process
that holds it (the CLI locks before loading the model, `evaluate` locks again) is free.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> with hold_run(folder):
...     with hold_run(folder):  # the same process again: no-op
...         (folder / LOCK_FILE).is_file()
True
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from explorer.core.distributed import SINGLE, Ranks, broadcast_object

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there (said once, on stderr)
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLockedError", "hold_run"]

LOCK_FILE = "run.lock"

#: folders this process holds (resolved path → how many nested `hold_run`s), so locking again is a no-op
_held: dict[Path, int] = {}


class RunLockedError(ValueError):
    """Another process is evaluating into the same folder (a ValueError: the CLI prints it and exits 2)."""


def _holder(handle: IO[str]) -> str:
    """Who holds the lock, in words, from what the holder wrote into the lock file."""
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        info = {}
    if not info.get("pid"):
        return "another process (it has not said which yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"process {info['pid']} on {info.get('host', 'an unknown host')}, since {since}"


def _try_lock(folder: Path) -> tuple[IO[str] | None, str]:
    """(the open, locked lock file, "") or (None, why not). Writes this process's pid, host and time into it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    if fcntl is None:
        print(f"warning: {folder} is not locked (no flock on this system): run one eval per --out at a time",
              file=sys.stderr)
        return handle, ""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        why = (f"{folder} is in use by another eval ({_holder(handle)}; lock: {folder / LOCK_FILE}). Two runs on "
               "one folder would mix their records: wait for that run to finish or stop it (a stopped or killed run "
               "frees the folder at once, and rerunning its command resumes it), or give this run another --out")
        handle.close()
        return None, why
    except OSError as err:  # a filesystem without locks (some network mounts): run, but say so
        print(f"warning: could not lock {folder} ({err}): run one eval per --out at a time", file=sys.stderr)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "argv": sys.argv}) + "\n")
    handle.flush()
    return handle, ""


@contextmanager
def hold_run(folder: Path, ranks: Ranks = SINGLE) -> Iterator[None]:
    """Hold `folder` for this run while the block runs; raise `RunLockedError` at once if another run holds it.

    Every rank of a data-parallel run must call it at the same point (rank 0 locks, the others learn its verdict).
    """
    key = Path(folder).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    handle, why = _try_lock(key) if ranks.is_main else (None, "")
    why = broadcast_object(ranks, why)
    if why:
        raise RunLockedError(why)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if handle is not None:
            handle.close()  # closing the file frees the lock
