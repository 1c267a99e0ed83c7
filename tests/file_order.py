"""Slowest test files first: the suite's wall time on a few xdist workers is set by whichever worker finishes last.

`--dist loadfile` hands each worker whole files in the order they were collected (pyproject.toml turns off xdist's
own reordering, which sorts by the number of tests, not by time). When a 2-minute file is handed out last, one worker
runs it alone while the other idles; handed out first (longest-processing-time-first), the short files fill in around
it. The order comes from a recorded run, `tests/data/file_durations.json`, written by
`pytest --record-file-durations tests/data/file_durations.json`; a file missing from it (a new one) is placed as if it
took the median time. A stale record only makes the suite slower, never wrong: test_file_order checks it names every
test file.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

RECORDED_DURATIONS = Path(__file__).parent / "data" / "file_durations.json"
#: Seconds are rounded to this many digits in the record so that a re-recording's diff stays readable.
_DIGITS = 1


def file_of(nodeid: str) -> str:
    """`tests/test_app.py::test_x[case]` → `tests/test_app.py` (doctests too: `explorer/a.py::explorer.a.f`)."""
    return nodeid.split("::", 1)[0]


def recorded_seconds(path: Path = RECORDED_DURATIONS) -> dict[str, float]:
    """Seconds per test file from the record; {} when there is none."""
    if not path.is_file():
        return {}
    return {name: float(seconds) for name, seconds in json.loads(path.read_text())["seconds_per_file"].items()}


def slowest_files_first(items: list[pytest.Item], seconds: dict[str, float]) -> None:
    """Sorts `items` in place by their file's recorded seconds, longest first; a stable sort, so tests keep their
    order within a file and files with equal times keep theirs."""
    default = statistics.median(seconds.values()) if seconds else 0.0
    items.sort(key=lambda item: -seconds.get(file_of(item.nodeid), default))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-file-durations", metavar="PATH", default=None,
                     help="write each test file's total seconds (set-up + call + tear-down) to PATH as JSON")


class _DurationRecorder:
    """Sums every report's duration per file; under xdist the controller receives the workers' reports."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus != 0:
            return  # a failed or interrupted run's times are not the suite's
        ordered = dict(sorted(((name, round(s, _DIGITS)) for name, s in self.seconds.items()), key=lambda kv: -kv[1]))
        record = {"how": "pytest --record-file-durations (tests/file_order.py); seconds of set-up + call + "
                         "tear-down per file, summed over its tests", "seconds_per_file": ordered}
        self.path.write_text(json.dumps(record, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--record-file-durations")
    if path and not hasattr(config, "workerinput"):  # only the controller (or a run without xdist) writes
        config.pluginmanager.register(_DurationRecorder(Path(path)), "file-duration-recorder")
