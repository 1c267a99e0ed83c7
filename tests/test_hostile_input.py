"""Hostile input against the running app (issue 20's findings 2, 3, 4, 7 and 8): each request gets a message, costs
the server less than 50 MB, opens nothing it should not and never learns a server path.

The server is `app.py`'s app on a tiny Qwen2-Audio twin (text and audio), calibrated on clips of its own (no speech
engine needed), launched in this process, so "the server's RSS" is this process's: a sampler thread records its
peak while each request runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from needs import needs_speech
from served_app import RSS_BUDGET_MB, PeakRss, free_port, raw_call, serve_app, tone

from explorer.inputs.uploads import MediaError, load_audio, load_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def audio_app(tiny_model_dir, tmp_path_factory):
    """(state, url): a tiny Qwen2-Audio twin served by app.py's app, calibrated on tone clips of its own."""
    with serve_app(tiny_model_dir("qwen2_audio"), tmp_path_factory.mktemp("hostile")) as served:
        yield served


@pytest.fixture(scope="module")
def client(audio_app):
    from gradio_client import Client

    return Client(audio_app[1], verbose=False)


# ------------------------------------------------------------------------------------------------ numbers (finding 2)


@pytest.mark.parametrize("window", ["0-10000000", "0-1000000000", "5-99999999999999", "-1-3", "1" * 5000])
def test_a_huge_layer_window_is_a_message_that_costs_nothing(client, window):
    with PeakRss() as peak:
        _, info = client.predict("Write a poem.", None, None, "fixed", 1.0, window, 4, 0, api_name="/generate_corrected")
    assert "corrected layers are one layer" in info, info
    assert peak.growth_mb < RSS_BUDGET_MB, (window, peak.growth_mb)


# ------------------------------------------------------------------------------------------------ audio (finding 3)


def _wav_at(path: Path, rate: int, frames: int) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, rng.uniform(-0.3, 0.3, frames).astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize("rate", [1_000_003, 10_000_019, 999, 2_147_483_647])
def test_a_tiny_wav_at_an_absurd_rate_is_refused_in_bounded_memory(client, tmp_path, rate):
    from gradio_client import handle_file

    wav = _wav_at(tmp_path / "odd rate.wav", rate, 160)
    assert wav.stat().st_size < 400
    with PeakRss() as peak:
        _, info = client.predict("", None, handle_file(str(wav)), 4, 0, api_name="/generate_plain")
    assert "sample rate" in info and "Unexpected error" not in info, info
    assert peak.growth_mb < RSS_BUDGET_MB, (rate, peak.growth_mb)


def test_an_unusual_but_real_rate_is_resampled_in_bounded_memory(tmp_path):
    """44,101 Hz is coprime with 16 kHz: resampled with a rounded ratio, so the filter stays small."""
    wav = _wav_at(tmp_path / "odd.wav", 44_101, 44_101)
    with PeakRss() as peak:
        audio, _ = load_audio(wav)
    assert abs(len(audio) - 16_000) <= 16 and peak.growth_mb < RSS_BUDGET_MB


@pytest.mark.parametrize("seconds", [0.01, 0.05, 0.099])
def test_a_clip_shorter_than_the_model_takes_gets_a_message(client, tmp_path, seconds):
    from gradio_client import handle_file

    wav = tone(tmp_path / "short.wav", seconds)
    _, info = client.predict("", None, handle_file(str(wav)), 4, 0, api_name="/generate_plain")
    assert "give at least 100 ms of sound" in info and "Unexpected error" not in info, info


@needs_speech
@pytest.mark.parametrize("request_text", ["·", "...", "?!"])
def test_a_request_with_nothing_to_speak_gets_a_message(client, request_text):
    """Found by the fuzz harness: "·" was spoken as 8 ms of sound, which then failed outside any message."""
    status = client.predict(request_text, api_name="/render_audio")[-1]
    assert "almost no speech" in status or "has no words to render" in status, status


def test_the_engine_refuses_a_short_clip_with_a_message_not_a_type_error(audio_app):
    """Below two audio tokens Qwen2-Audio takes transformers' legacy path and fails with a TypeError; the engine
    says what is wrong first, whoever calls it (the app, eval)."""
    from explorer.correction.generation import generate
    from explorer.correction.regap import CorrectionConfig
    from explorer.inputs.media import Prompt

    session = audio_app[0].session
    short = Prompt(text="Listen.", audio=np.zeros(800, np.float32), modality="audio")
    with pytest.raises(MediaError, match="at least 100 ms"):
        generate(session.model, short, session.profile, CorrectionConfig(mode="off"), max_new_tokens=2)
    enough = Prompt(text="Listen.", audio=np.zeros(1_600, np.float32), modality="audio")
    assert generate(session.model, enough, session.profile, CorrectionConfig(mode="off"), max_new_tokens=2)


# ------------------------------------------------------------------------------------------------ switching (finding 4)


@pytest.fixture
def loads(audio_app, monkeypatch):
    """Every model id the server tries to load (the loader itself fails, so the served model stays)."""
    from explorer.app import ui_session
    from explorer.model.models import ModelLoadError

    tried: list[str] = []

    def fake_load(model_id, **_kwargs):
        tried.append(model_id)
        raise ModelLoadError(f"{model_id} is a folder but not a model: it has no config.json "
                             "(/root/.cache/huggingface/hub/models--x/config.json)")

    monkeypatch.setattr(ui_session, "load_model", fake_load)
    return tried


@pytest.mark.parametrize("headers", [
    {"Host": "attacker.test"},
    {"Host": "attacker.test:7860"},
    {"X-Forwarded-For": "203.0.113.9"},
    {"Forwarded": "for=203.0.113.9;host=example.org"},
    {"X-Real-IP": "203.0.113.9"},
])
def test_model_switching_through_a_proxy_or_a_rebound_name_is_refused_unlooked(audio_app, loads, headers):
    url = audio_app[1]
    replies = set()
    for model_id in ("/etc", "/nonexistent", "/etc/passwd", "gpt2"):
        reply = raw_call(url, "load_model", [model_id], headers=headers)
        assert "only on this machine itself" in reply and "Still serving" in reply, reply
        assert model_id not in reply.replace("Still serving", "")
        replies.add(reply.split("data:", 1)[1].split('"', 2)[1])  # the status message
    assert len(replies) == 1, replies  # one message for every id: no existence oracle
    assert loads == []  # nothing was looked up
    assert audio_app[0].session.model.name.endswith("model")  # still the tiny twin


def test_a_local_request_may_switch_and_no_server_path_comes_back(audio_app, loads):
    reply = raw_call(audio_app[1], "load_model", ["/etc"])
    assert loads == ["/etc"]
    status, info = json.loads(reply.split("data:", 1)[1])[:2]
    assert "Could not load '/etc'" in status and "…/config.json" in status, status
    for text in (status, info):  # neither the cache nor the served model's folder: only its name
        assert "/root" not in text and "/tmp" not in text and "…/model" in text, text


def test_the_page_says_the_model_is_shared(audio_app):
    import httpx

    assert "One model for every visitor" in httpx.get(audio_app[1], timeout=30).text


# ------------------------------------------------------------------------------------------------ leaks (finding 7)


def test_the_run_viewer_answers_an_empty_or_odd_pick_with_a_message(tmp_path):
    from explorer.app.page import build_viewer_app

    (tmp_path / "runs" / "one").mkdir(parents=True)
    demo = build_viewer_app([(tmp_path / "runs").resolve()])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        for value in (None, "", "../etc", "/etc", 5, ["x"], "runs/../../etc"):
            reply = raw_call(f"http://127.0.0.1:{port}/", "open_run", [value])
            assert "event: complete" in reply and "⚠" in json.loads(reply.split("data:", 1)[1])[0], (value, reply)
            assert str(tmp_path) not in reply
    finally:
        demo.close()


def test_skipped_reasons_in_the_run_viewer_show_no_server_path():
    from explorer.evaluation.compare import RunResult
    from explorer.evaluation.run_view import run_rows

    record = {"id": "h1", "modality": "image", "mode": "off", "label": "harmful",
              "skipped": "image file not found: /srv/private/benchmarks/figstep/h1.png"}
    run = RunResult(name="x", folder=Path("."), metrics={}, records={("h1", "image", "off"): record})
    verdict = run_rows(run)[0][5]
    assert verdict == "skipped: image file not found: …/h1.png"


# ------------------------------------------------------------------------------------------------ files (finding 8)


def test_a_huge_file_is_refused_from_its_size_before_a_byte_is_read(tmp_path):
    from explorer.inputs.uploads import MAX_FILE_BYTES

    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as handle:  # 1 GB that costs no disk: a hole
        handle.truncate(1 << 30)
    wav = tmp_path / "huge.wav"
    with wav.open("wb") as handle:
        handle.truncate(1 << 30)
    with PeakRss() as peak:
        with pytest.raises(MediaError, match="over the limit"):
            load_image(sparse)
        with pytest.raises(MediaError, match="over the limit"):
            load_audio(wav)
    assert peak.growth_mb < RSS_BUDGET_MB
    at_limit = tmp_path / "at-limit.png"
    at_limit.write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    with pytest.raises(MediaError, match="over the limit"):
        load_image(at_limit)


def test_images_open_only_in_the_listed_formats(tmp_path, monkeypatch):
    """An EPS file must never reach Pillow's EPS plugin (which hands the file to Ghostscript)."""
    from PIL import EpsImagePlugin, Image

    opened: list = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or (_ for _ in ()).throw(
        SyntaxError("EPS plugin reached")))
    eps = tmp_path / "picture.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(MediaError, match="not an image this app opens"):
        load_image(eps)
    assert opened == []
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"):  # every listed format still opens
        path = tmp_path / f"ok.{fmt.lower()}"
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format=fmt)
        assert load_image(path).size == (8, 8)
