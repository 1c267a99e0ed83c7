"""Requests in flight and the start-up warm-up that waits for them (explorer/app/activity.py)."""

from __future__ import annotations

import threading
import time

from explorer.app import page, ui_session
from explorer.app.activity import Activity
from explorer.app.ui_session import AppSettings, AppState


def _hold(activity: Activity, seconds: float) -> threading.Thread:
    def request() -> None:
        with activity.serving():
            time.sleep(seconds)

    thread = threading.Thread(target=request)
    thread.start()
    return thread


def test_wait_until_quiet_waits_for_the_request_in_flight_then_the_quiet():
    activity = Activity()
    started = time.monotonic()
    holder = _hold(activity, 0.4)
    time.sleep(0.05)
    assert activity.in_flight == 1
    assert activity.wait_until_quiet(quiet_s=0.3, at_most_s=10) is True
    assert time.monotonic() - started >= 0.4 + 0.3 - 0.02  # the request's end, then the quiet after it
    assert activity.in_flight == 0
    holder.join()


def test_wait_until_quiet_gives_up_after_at_most_on_a_busy_server():
    activity = Activity()
    holder = _hold(activity, 0.8)
    time.sleep(0.05)
    started = time.monotonic()
    assert activity.wait_until_quiet(quiet_s=0.1, at_most_s=0.3) is False
    assert 0.28 <= time.monotonic() - started < 0.7  # before the request ends
    holder.join()


def test_the_quiet_counts_from_the_start_when_no_request_came():
    activity = Activity()
    time.sleep(0.25)
    started = time.monotonic()
    assert activity.wait_until_quiet(quiet_s=0.2, at_most_s=10) is True
    assert time.monotonic() - started < 0.1


class _Session:
    """What the warm-up asks of a model session, recorded."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def starting_strength(self) -> tuple[float, str]:
        return 1.0, "test"

    def config(self, mode: str, strength: float) -> tuple[str, float]:
        return mode, strength

    def corrected_calibration(self, config: tuple[str, float]) -> None:
        self.calls.append(f"corrected {config}")


def test_umap_compiles_only_once_no_request_is_in_flight(monkeypatch):
    calls: list[str] = []
    state = AppState(settings=AppSettings(model="none"), session=_Session(calls))  # type: ignore[arg-type]
    monkeypatch.setattr(ui_session, "warm_up_umap", lambda: calls.append(f"umap, {state.activity.in_flight} in flight"))
    monkeypatch.setattr(ui_session, "WARM_UP_QUIET_S", 0.2)
    holder = _hold(state.activity, 0.6)
    time.sleep(0.05)
    warm_up = state.start_warm_up()
    time.sleep(0.3)
    assert calls == ["corrected ('adaptive', 1.0)"]  # the calibration at once; UMAP waits for the request
    assert not state.umap_ready.is_set()
    warm_up.join(timeout=10)
    assert calls == ["corrected ('adaptive', 1.0)", "umap, 0 in flight"]
    assert state.umap_ready.is_set()
    holder.join()


def test_every_bound_handler_is_in_flight_while_it_runs_streams_included():
    state = AppState(settings=AppSettings(model="none"), session=_Session([]))  # type: ignore[arg-type]

    def handler(st: AppState, value: int) -> tuple:
        return (st.activity.in_flight, value)

    def streamed(st: AppState) -> object:
        for _ in range(3):
            yield (st.activity.in_flight,)

    assert page._bind(state, handler)(7) == (1, 7)
    assert state.activity.in_flight == 0
    stream = page._bind(state, streamed)()
    assert next(stream) == (1,)
    assert state.activity.in_flight == 1  # between chunks the stream is still in flight
    stream.close()  # a visitor who leaves mid-stream ends it
    assert state.activity.in_flight == 0
