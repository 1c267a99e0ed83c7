"""Fuzz every API endpoint of the running app with hypothesis: random strings, numbers (NaN, ±inf, huge, tiny,
negative), values of the wrong type, paths that are not uploads, and uploaded files of random bytes and truncated
media. Every reply must be a message (a completed event, or an error event that carries one; a bare error only
where Gradio refused the payload before any handler ran), never "Unexpected error", a stack trace or a server
path; no refused request may add more than RSS_BUDGET_MB to the server's memory at its peak, a whole run at length
no more than LEAK_BUDGET_MB to the memory in use (after malloc_trim) for good; and the app must still answer a plain
request afterwards.

The server is app.py's app on a tiny Qwen2.5-Omni twin (text, image and audio: every loader is reachable),
calibrated on media of its own, with the run viewer on. The quick suite tries FUZZ_QUICK examples per endpoint;
the slow one FUZZ_SLOW (>= 1,000 in all). Each test writes what it tried and what came back to
test-artifacts/fuzz/<endpoint>.<quick|at_length>.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served_app import (
    RSS_BUDGET_MB,
    PeakRss,
    memory_in_use,
    raw_call,
    serve_app,
    upload,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ_QUICK = 12
FUZZ_SLOW = 91  # × 11 endpoints + list_runs's one (it takes no input) = 1,002 generated cases
ARTIFACTS = Path("test-artifacts/fuzz")
#: What one endpoint's whole fuzz run may leave behind in the server's memory (caches are bounded LRUs: the
#: corrected calibrations of distinct settings and their embeddings; a leak grows with every case).
LEAK_BUDGET_MB = 150


# ------------------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def fuzz_app(tiny_model_dir, tmp_path_factory):
    """(state, url, media pool): the app on a tiny Omni twin with a run folder to view, and uploaded media."""
    folder = tmp_path_factory.mktemp("fuzz")
    runs = folder / "runs"
    (runs / "one").mkdir(parents=True)
    (runs / "one" / "metrics.json").write_text(json.dumps({"model": "tiny", "refusal_rate": {}}))
    (runs / "one" / "generations.jsonl").write_text(json.dumps(
        {"id": "h1", "modality": "text", "mode": "off", "label": "harmful", "instruction": "A request.",
         "text": "An answer.", "refused": False}) + "\n")
    with serve_app(tiny_model_dir("qwen2_5_omni"), folder / "app", model_switch="listed",
                   allowed_models=("no-such-model",), run_roots=[runs.resolve()]) as (state, url):
        pool = [upload(url, name, data) for name, data in _media_files(folder).items()]
        _warm_up(url, pool)
        yield state, url, pool, folder


def _media_files(folder: Path) -> dict[str, bytes]:
    """Files a visitor might upload: valid, truncated, mislabelled, empty, odd."""
    from PIL import Image

    def image_bytes(fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (20, 120, 200)).save(buffer, format=fmt)
        return buffer.getvalue()

    def wav_bytes(seconds: float, rate: int = 16_000) -> bytes:
        buffer = io.BytesIO()
        t = np.arange(int(seconds * rate)) / rate
        sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
        return buffer.getvalue()

    png, wav = image_bytes("PNG"), wav_bytes(0.5)
    odd_rate = io.BytesIO()
    sf.write(odd_rate, np.zeros(160, np.int16), 1_000_003, format="WAV", subtype="PCM_16")
    return {
        "photo.png": png, "photo.jpg": image_bytes("JPEG"), "photo.gif": image_bytes("GIF"),
        "photo.tiff": image_bytes("TIFF"), "speech.wav": wav, "short.wav": wav_bytes(0.03),
        "cut.png": png[: len(png) // 2], "cut.wav": wav[:60], "header-only.wav": wav[:44],
        "empty.png": b"", "empty.wav": b"", "odd-rate.wav": odd_rate.getvalue(),
        "page.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "noise.png": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
        "noise.wav": b"RIFF\xff\xff\xff\xffWAVEfmt " + bytes(200), "notes.txt.png": b"just text, not a picture",
    }


def _warm_up(url: str, pool: list[dict]) -> None:
    """One valid call of each kind first: what the first call of a kind loads once (imports, the corrected
    calibration of the starting strength, numba's compiled UMAP) is not a request's cost."""
    photo = next(p for p in pool if p["orig_name"] == "photo.png")
    speech = next(p for p in pool if p["orig_name"] == "speech.wav")
    for api, data in [("analyse", ["A request.", photo, None, 1, "adaptive", 1.0, "", "PCA"]),
                      ("analyse", ["", None, speech, 1, "fixed", 0.5, "", "PCA"]),
                      ("generate_corrected", ["A request.", photo, None, "adaptive", 1.0, "", 8, 0]),
                      ("show_collapse", [8, "PCA"]), ("show_collapse", [8, "UMAP"]),  # UMAP's JIT compiles once
                      ("render_image", ["A request."]),
                      ("export", ["", "A request.", None, None, 1, "adaptive", 1.0, "", "PCA", "", "", "", ""]),
                      ("open_run", ["runs/one"])]:
        raw_call(url, api, data)


# ------------------------------------------------------------------------------------------------ strategies


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy, per_ten: int = 7) -> st.SearchStrategy:
    """`common` in about `per_ten` draws of ten, else `rare` (one_of weighs by its own rules, not evenly)."""
    return st.integers(0, 9).flatmap(lambda roll: common if roll < per_ten else rare)


def _junk() -> st.SearchStrategy:
    """Any JSON value, as one branch (`.map` keeps one_of from merging its many branches into the caller's)."""
    return _json_values(1).map(lambda value: value)


def _json_values(depth: int = 2) -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
    if depth == 0:
        return scalars
    inner = _json_values(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4))


TRICKY_TEXT = ["", " ", "\x00", "../../etc/passwd", "/etc/passwd", "%s%n{0}", "<script>alert(1)</script>",
               "\u202e\u2066", "🙂" * 600, "a " * 1500, "0-1000000000", "-1", "1e400", "NaN", "UMAP", "PCA",
               "adaptive", "off", "demo", "x" * 5000, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
#: Values the page could send in most draws (so that whole requests are often valid and reach the model), else edges
#: and junk.
texts = mostly(st.text(st.characters(codec="utf-8"), min_size=1, max_size=200),
               st.one_of(st.text(max_size=200), st.sampled_from(TRICKY_TEXT), st.text(min_size=1900, max_size=2200),
                         _junk()))
numbers = mostly(st.one_of(st.integers(0, 3), st.floats(0, 3), st.integers(1, 24)),
                 st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
                           st.sampled_from([0, 1, 2, 3, 48, 256, 257, -1, 1e-300, 2**31, 2**63, "3", "1e400", "nan"]),
                           _junk()))
page_modes = st.sampled_from(["off", "fixed", "fixed_axis", "adaptive", "adaptive_raw", "shiftdc", "cmrm",
                              "cmrm_sample"])
modes = mostly(page_modes, texts)
methods = mostly(st.sampled_from(["UMAP", "PCA"]), st.one_of(st.sampled_from(["umap", "tsne"]), texts))
windows = mostly(st.sampled_from(["", "0", "1", "0-1", "1-2"]),
                 st.one_of(st.sampled_from(["1-0", "2-2", "0-1000000000", "1,2", "default", "-3"]), texts))


def _media(url: str, pool: list[dict]) -> st.SearchStrategy:
    fake_paths = st.sampled_from(["/etc/passwd", "/proc/self/environ", "../../app.py", "", "C:\\boot.ini"])
    return mostly(st.sampled_from(pool), st.one_of(
        fake_paths, fake_paths.map(lambda p: {"path": p}),
        fake_paths.map(lambda p: {"path": p, "meta": {"_type": "gradio.FileData"}}),
        st.binary(max_size=4000).flatmap(lambda data: st.sampled_from(["x.png", "x.wav", "x.mp3", "x.eps"]).map(
            lambda name: upload(url, name, data))),
        _junk(),
    ), per_ten=6)


def _endpoints(url: str, pool: list[dict]) -> dict[str, st.SearchStrategy]:
    media = _media(url, pool)
    # A request is text alone, or with an image, or with audio (or, wrongly, with both): each a quarter of draws.
    text_media = st.one_of(st.tuples(texts, st.none(), st.none()), st.tuples(texts, media, st.none()),
                           st.tuples(texts, st.none(), media), st.tuples(texts, media, media))
    return {
        "analyse": st.tuples(text_media, numbers, modes, numbers, windows, methods).map(lambda t: [*t[0], *t[1:]]),
        "generate_plain": st.tuples(text_media, numbers, numbers).map(lambda t: [*t[0], *t[1:]]),
        "generate_corrected": st.tuples(text_media, modes, numbers, windows, numbers, numbers).map(
            lambda t: [*t[0], *t[1:]]),
        "strength_release": st.tuples(text_media, modes, numbers, windows, numbers, numbers).map(
            lambda t: [*t[0], *t[1:]]),
        "mode_defaults": st.tuples(modes).map(list),
        "render_image": st.tuples(texts).map(list),
        "render_audio": st.tuples(texts).map(list),
        "load_model": st.tuples(st.one_of(texts, st.sampled_from(["no-such-model", "demo", "/etc", "gpt2"]))).map(list),
        "show_collapse": st.tuples(numbers, methods).map(list),
        "export": st.tuples(texts, text_media, numbers, modes, numbers, windows, methods, texts, texts, texts,
                            texts).map(lambda t: [t[0], *t[1], *t[2:]]),
        "open_run": st.tuples(st.one_of(st.sampled_from(["runs/one", "runs", "runs/../..", "/etc"]), texts)).map(list),
        "list_runs": st.just([]),
    }


ENDPOINTS = ["analyse", "generate_plain", "generate_corrected", "strength_release", "mode_defaults", "render_image",
             "render_audio", "load_model", "show_collapse", "export", "open_run", "list_runs"]


# ------------------------------------------------------------------------------------------------ the check


def _strings(value: Any, key: str = "") -> list[str]:
    """Every string a visitor would read in a reply, leaving out Gradio's own file references (their `path` and
    `url` fields name files in Gradio's cache, which it serves by design)."""
    if isinstance(value, str):
        return [] if key in ("path", "url") else [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for k, item in value.items() for s in _strings(item, str(k))]
    return []


def _said(reply: str) -> str:
    """The reply's message in short (the warning of a completed event, or an error's text), for the record."""
    data = [line.split(":", 1)[1].strip() for line in reply.splitlines() if line.startswith("data:")]
    payload = json.loads(data[-1]) if data else None
    if isinstance(payload, dict):  # an error event
        return re.sub(r"\d+", "N", f"error: {payload.get('error') or 'bare'}"[:70])
    warning = next((t for t in _strings(payload) if "⚠️" in t), None)
    return re.sub(r"\d+", "N", (warning or "served")[:70])


def _verdict(reply: str, server_roots: list[str], server_log: str) -> str:
    """'served' for a completed event; 'refused' for a completed event whose status is a warning (⚠️) or an error
    event with its message; 'refused by Gradio' for a bare error event that Gradio sent while it checked the payload,
    before any handler ran (`preprocess_data` in the traceback it logs: a file reference that is not an upload, a
    value of the wrong shape); AssertionError for anything else (no event, any other bare error, "Unexpected
    error", a stack trace, a server path)."""
    events = [line.split(":", 1)[1].strip() for line in reply.splitlines() if line.startswith("event:")]
    datas = [line.split(":", 1)[1].strip() for line in reply.splitlines() if line.startswith("data:")]
    assert events, reply
    last, data = events[-1], json.loads(datas[-1]) if datas else None
    assert last in ("complete", "error"), reply
    if last == "error":
        message = (data or {}).get("error")
        if message is None:
            assert "in preprocess_data" in server_log, f"a bare error after the payload was taken: {server_log[-2000:]}"
            return "refused by Gradio"
        assert isinstance(message, str) and message.strip(), reply[:500]
        shown = [message]
    else:
        shown = _strings(data)
    for text in shown:
        assert "Unexpected error" not in text and "Traceback" not in text, text[:500]
        for root in server_roots:
            assert root not in text, (root, text[:500])
    return "refused" if last == "error" or any("⚠️" in text for text in shown) else "served"


def _fuzz(fuzz_app, endpoint: str, examples: int, run: str) -> None:
    state, url, pool, folder = fuzz_app
    roots = [str(folder), str(Path.cwd()), str(Path.home()) + "/"]
    strategy = _endpoints(url, pool)[endpoint]
    outcomes: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    worst = {"growth_mb": 0.0, "data": None}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,  # the same cases in CI
              suppress_health_check=list(HealthCheck))
    @given(data=strategy)
    def one(data: list) -> None:
        with PeakRss() as peak, contextlib.redirect_stderr(io.StringIO()) as server_log:  # Gradio logs there
            reply = raw_call(url, endpoint, data, timeout=120)
        verdict = _verdict(reply, roots, server_log.getvalue())
        outcomes[verdict] += 1
        messages[_said(reply)] += 1
        if verdict != "served":  # what is refused costs (almost) nothing; what is served may do real work
            if peak.growth_mb > worst["growth_mb"]:
                worst.update(growth_mb=round(peak.growth_mb, 1), data=repr(data)[:300])
            assert peak.growth_mb < RSS_BUDGET_MB, (endpoint, peak.growth_mb, repr(data)[:300])

    # The whole run's memory is measured at length only: 12 cases could not show a leak the budget would catch, and
    # each measure is a full collection of the server's heap (~0.4 s, two per run).
    measured = run == "at_length"
    objects_before, before = memory_in_use() if measured else (None, None)
    started = time.perf_counter()
    one()
    seconds = time.perf_counter() - started
    objects_after, after = memory_in_use() if measured else (None, None)
    still = raw_call(url, "generate_plain", ["Write a poem.", None, None, 4, 0])
    assert "no correction" in still, still  # the app still answers
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{endpoint}.{run}.json").write_text(json.dumps(
        {"endpoint": endpoint, "run": run, "cases": sum(outcomes.values()), "seconds": round(seconds, 1),
         "outcomes": dict(outcomes), "messages": dict(messages.most_common()),
         "worst_refused_peak_rss": worst, "rss_mb_before": before and round(before),
         "rss_mb_after": after and round(after), "live_objects_before": objects_before,
         "live_objects_after": objects_after}, indent=1))
    if measured:
        assert after - before < LEAK_BUDGET_MB, (endpoint, before, after)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_fuzz_every_endpoint_quick(fuzz_app, endpoint):
    _fuzz(fuzz_app, endpoint, FUZZ_QUICK, "quick")


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_fuzz_every_endpoint_at_length(fuzz_app, endpoint):
    _fuzz(fuzz_app, endpoint, FUZZ_SLOW, "at_length")
