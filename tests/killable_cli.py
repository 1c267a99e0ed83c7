"""The CLI in a fresh interpreter whose `generate_batch` SIGKILLs its own process at the KILL_AT-th call (unset or
0: never), on every rank or, with KILL_RANK, on that rank only: no cleanup, no finally blocks, exactly what an
out-of-memory killer or a pulled plug does. The one kill harness of tests/test_evaluation.py (one process) and
tests/test_distributed.py (torchrun); `in_this_process` runs test_evaluation's reference and resuming runs, which no
kill touches, without a fresh interpreter.

    KILL_AT=5 python tests/killable_cli.py eval --model ... --out DIR
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def killing(real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, counting its calls, that kills this process at the KILL_AT-th call on the chosen rank."""
    calls = [0]

    def generate_batch(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        on_this_rank = os.environ.get("KILL_RANK") in (None, os.environ.get("RANK", "0"))
        if on_this_rank and calls[0] == int(os.environ.get("KILL_AT") or 0):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return generate_batch


def in_this_process(args: list[str]) -> subprocess.CompletedProcess:
    """The same CLI, never killed, run by its `main` in the calling interpreter: a reference or resuming run without
    a fresh interpreter's ~5 s of imports and model loading. Its stderr is captured as a subprocess's would be;
    stdout is not."""
    from explorer.app.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(args)
    return subprocess.CompletedProcess(["explorer", *args], code or 0, "", stderr.getvalue())


if __name__ == "__main__":
    from explorer.app.cli import main
    from explorer.evaluation import runner

    runner.generate_batch = killing(runner.generate_batch)
    sys.exit(main(sys.argv[1:]))
