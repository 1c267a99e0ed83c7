"""The visitors' requests in flight, so that background work starts when nobody is waiting for an answer.

Why: UMAP's compilation (numba, ~8 s of one core, much of it holding Python's lock) ran beside a visitor's first
"Analyse" on a 2-core machine and doubled it: 0.6 s → 1.1-1.3 s from the rendered request to the plots in three
warm starts each (the request `benchmarks/startup.py` sends). The start-up warm-up now waits for a quiet moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Activity:
    """Counts the requests in flight and when the last one ended; `wait_until_quiet` blocks background work."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        self._in_flight = 0
        self._last_end = clock()  # the quiet is counted from the start until a first request comes

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Wrap one request (the whole stream, for a streamed one)."""
        with self._changed:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._last_end = self._clock()
                self._changed.notify_all()

    @property
    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    def wait_until_quiet(self, quiet_s: float, at_most_s: float) -> bool:
        """Block until no request has been in flight for `quiet_s` seconds, or `at_most_s` have passed (a busy
        server still gets its background work done). → whether it was quiet."""
        deadline = self._clock() + at_most_s
        with self._changed:
            while True:
                now = self._clock()
                if self._in_flight == 0 and now - self._last_end >= quiet_s:
                    return True
                if now >= deadline:
                    return False
                until = deadline if self._in_flight else min(deadline, self._last_end + quiet_s)
                self._changed.wait(timeout=max(until - now, 0.005))
