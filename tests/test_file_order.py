"""The suite's file order (tests/file_order.py): slowest recorded files first, and a record that knows every file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from file_order import (
    RECORDED_DURATIONS,
    _DurationRecorder,
    recorded_seconds,
    slowest_files_first,
)

TESTS = Path(__file__).parent


def test_the_record_names_every_test_file_and_no_other():
    """A new test file is placed at the median until the record is written again (`pytest
    --record-file-durations tests/data/file_durations.json`); this says when that is due."""
    recorded = {name for name in recorded_seconds() if name.startswith("tests/")}
    on_disk = {f"tests/{path.name}" for path in TESTS.glob("test_*.py")}
    assert recorded == on_disk, f"re-record {RECORDED_DURATIONS}: missing {on_disk - recorded}, gone {recorded - on_disk}"


def test_files_are_sorted_longest_first_keeping_the_order_within_a_file():
    items = [SimpleNamespace(nodeid=nodeid) for nodeid in
             ["tests/a.py::one", "tests/b.py::one", "tests/a.py::two", "tests/c.py::one", "tests/new.py::one",
              "tests/b.py::two", "tests/d.py::one"]]
    slowest_files_first(items, {"tests/a.py": 1.0, "tests/b.py": 9.0, "tests/c.py": 4.0, "tests/d.py": 6.0})
    assert [item.nodeid for item in items] == ["tests/b.py::one", "tests/b.py::two", "tests/d.py::one",
                                               "tests/new.py::one", "tests/c.py::one",  # new: the median, 5 s
                                               "tests/a.py::one", "tests/a.py::two"]


def test_the_recorder_sums_each_files_phases_and_writes_only_a_passing_run(tmp_path):
    path = tmp_path / "durations.json"
    recorder = _DurationRecorder(path)
    for nodeid, seconds in [("tests/a.py::x", 0.25), ("tests/a.py::x", 1.0), ("tests/b.py::y[1]", 2.5),
                            ("explorer/m.py::explorer.m.f", 0.04)]:
        recorder.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=seconds))
    recorder.pytest_sessionfinish(None, exitstatus=1)
    assert not path.exists()
    recorder.pytest_sessionfinish(None, exitstatus=0)
    assert json.loads(path.read_text())["seconds_per_file"] == {"tests/b.py": 2.5, "tests/a.py": 1.2,
                                                                "explorer/m.py": 0.0}
    assert recorded_seconds(path) == {"tests/b.py": 2.5, "tests/a.py": 1.2, "explorer/m.py": 0.0}
