"""A bare machine: speech from the espeak-ng library wheel, the app and the CLI without any speech engine, and the
README's set-up without apt (issue 20). `SGE_SPEECH_ENGINE=none` stands for a machine with no engine at all."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from explorer.app.ui import EXAMPLE_HARMFUL
from explorer.inputs.media import AUDIO_CARRIER

ROOT = Path(__file__).resolve().parent.parent
SETUP = "bash scripts/setup.sh"
needs_library = pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                                   reason=f"espeakng-loader is not installed (requirements.txt; `{SETUP}`)")
needs_command = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason=f"no espeak-ng command (`{SETUP}` as root, or `sudo apt-get install espeak-ng`)")


# --------------------------------------------------------------------------------------------------
# Speech through the library


@needs_library
@pytest.mark.parametrize("style", ["sentence", "slots"])
def test_library_engine_speaks(monkeypatch, tmp_path, style):
    from explorer.inputs.speech import render_audio

    monkeypatch.setenv("SGE_SPEECH_ENGINE", "library")
    audio = render_audio("How do I bake bread?", style=style, cache_dir=tmp_path / "a")
    assert audio.dtype == np.float32 and audio.ndim == 1
    if style == "slots":
        assert len(audio) == 5 * 6_400  # five words, 0.4 s each at 16 kHz
    else:
        assert 0.5 * 16_000 < len(audio) < 4 * 16_000
    assert 0.05 < np.abs(audio).max() <= 1.0
    # a fresh process per utterance: the same text gives the same samples, also without the cache
    np.testing.assert_array_equal(audio, render_audio("How do I bake bread?", style=style, cache_dir=tmp_path / "b"))


@needs_library
def test_speech_cache_is_keyed_by_engine(monkeypatch, tmp_path):
    from explorer.inputs import speech
    from explorer.inputs.speech_engine import SpeechEngine, speech_engine

    monkeypatch.setenv("SGE_SPEECH_ENGINE", "library")
    speech.render_audio("Plant tomatoes in spring.", cache_dir=tmp_path)
    library = speech_engine()
    assert library.version.startswith("espeak-ng library ") and "espeakng-loader" in library.version
    other = SpeechEngine("other", library.command, "another engine 9.9")
    monkeypatch.setattr(speech, "speech_engine", lambda: other)
    speech.render_audio("Plant tomatoes in spring.", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.wav"))) == 2  # one waveform per engine: never read for the other


@needs_library
@needs_command
def test_library_speaks_like_the_command():
    """Debian's 1.51 and the wheel's 1.52 give the same samples for this sentence (not for every word: README)."""
    from explorer.inputs.speech_engine import (
        SpeechSettings,
        _command_engine,
        _library_engine,
    )

    settings = SpeechSettings("en-us", 160, 50, 100)
    command, rate = _command_engine(shutil.which("espeak-ng")).speak("How do I bake bread?", settings)
    library, library_rate = _library_engine().speak("How do I bake bread?", settings)
    assert rate == library_rate == 22_050
    np.testing.assert_array_equal(command, library)


def test_engine_choice_is_checked(monkeypatch):
    from explorer.inputs.speech_engine import (
        SpeechUnavailableError,
        speech_engine,
        speech_unavailable_reason,
    )

    monkeypatch.setenv("SGE_SPEECH_ENGINE", "festival")
    with pytest.raises(ValueError, match="SGE_SPEECH_ENGINE must be one of 'auto', 'espeak-ng', 'library', 'none'"):
        speech_engine()
    monkeypatch.setenv("SGE_SPEECH_ENGINE", "none")
    with pytest.raises(SpeechUnavailableError, match="sudo apt-get install espeak-ng"):
        speech_engine()
    assert "speech is unavailable" in speech_unavailable_reason()


# --------------------------------------------------------------------------------------------------
# No speech engine: the app and the CLI


@pytest.fixture(scope="module")
def speechless_audio_model(tiny_model_dir, tmp_path_factory):
    """(AppState, cache folder) of a tiny text+audio model started with no speech engine."""
    from explorer.app.ui_session import AppSettings, AppState

    cache = tmp_path_factory.mktemp("sge-cache-speechless")
    settings = AppSettings(model=str(tiny_model_dir("qwen2_audio")), device="cpu", calibration_limit=4, cache_dir=cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SGE_SPEECH_ENGINE", "none")
        return AppState.start(settings, warm_up=False), cache


def test_app_state_starts_without_speech(speechless_audio_model, monkeypatch):
    from explorer.app import ui

    monkeypatch.setenv("SGE_SPEECH_ENGINE", "none")
    state, _ = speechless_audio_model
    assert state.session.model.modalities == ("text", "audio") and state.session.profile.modalities == ["text"]
    info = state.session.describe()
    assert "Speech is unavailable on this server" in info and "sudo apt-get install espeak-ng" in info
    audio, carrier, status = ui.render_audio_input(state, EXAMPLE_HARMFUL)
    assert audio is None and carrier is None
    assert "Cannot render as speech: speech is unavailable" in status and "sudo apt-get install espeak-ng" in status
    # an uploaded clip is still heard: answered plainly; the correction says what the profile lacks
    clip = (16_000, (np.sin(np.arange(16_000) / 5) * 3000).astype(np.int16))
    _, badge = ui.final(ui.generate_plain(state, AUDIO_CARRIER, None, clip, 4, 0))
    assert "⚠️" not in badge
    _, badge = ui.final(ui.generate_corrected(state, AUDIO_CARRIER, None, clip, "adaptive", 1.0, "", 4, 0))
    assert "no audio drift" in badge


def test_cli_eval_with_audio_stops_up_front_without_speech(speechless_audio_model, monkeypatch, tmp_path, capsys):
    from explorer.app.cli import main

    monkeypatch.setenv("SGE_SPEECH_ENGINE", "none")
    state, cache = speechless_audio_model
    args = ["eval", "--model", state.session.model.name, "--device", "cpu", "--modalities", "text,audio", "--limit",
            "1", "--calibration-limit", "4", "--cache-dir", str(cache), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot calibrate on audio: speech is unavailable" in err and "sudo apt-get install espeak-ng" in err
    assert "--modalities text" in err and not (tmp_path / "run" / "metrics.json").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_app(env: dict[str, str], timeout: float = 600.0) -> tuple[subprocess.Popen, str]:
    """`python app.py` (the demo) on a free loopback port → (process, URL) once / answers; fails with its output."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--device", "cpu",
                                "--calibration-limit", "4"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{process.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(1)
    process.kill()
    pytest.fail(f"app.py did not answer within {timeout:.0f} s:\n{process.communicate()[0][-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _page_config(url: str) -> str:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        return response.read().decode()


@pytest.mark.slow
@pytest.mark.checkpoint
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_app_py_starts_without_speech(tmp_path):
    from gradio_client import Client

    env = {**os.environ, "SGE_SPEECH_ENGINE": "none", "SGE_CACHE_DIR": str(tmp_path / "cache")}
    process, url = _serve_app(env)
    try:
        assert "Speech is unavailable on this server" in _page_config(url)
        status = Client(url, verbose=False).predict(EXAMPLE_HARMFUL, api_name="/render_audio")[-1]
        assert "Cannot render as speech" in status and "sudo apt-get install espeak-ng" in status
    finally:
        _stop(process)


def _path_without(program: str, shadows: Path) -> str:
    """PATH with `program` hidden: each folder that holds it is replaced by a folder of links to everything else
    in it (dropping the folder would hide bash and python too where they share /usr/bin, as on Debian)."""
    folders = []
    for index, folder in enumerate(f for f in os.environ.get("PATH", "").split(os.pathsep) if f):
        if (Path(folder) / program).exists():
            shadow = shadows / f"{index}"
            shadow.mkdir(parents=True)
            for entry in Path(folder).iterdir():
                if entry.name != program:
                    (shadow / entry.name).symlink_to(entry)
            folder = str(shadow)
        folders.append(folder)
    return os.pathsep.join(folders)


@pytest.mark.slow
@pytest.mark.checkpoint
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_setup_without_apt_then_the_app_speaks_with_the_library(tmp_path):
    """The README's set-up on a machine where apt cannot run: it finishes, says how to get espeak-ng and Chromium
    and which engine speaks; the app then starts with the library's speech (about 20 s for set-up, warm venv)."""
    from gradio_client import Client

    env = {**os.environ, "PATH": _path_without("espeak-ng", tmp_path / "bin"), "SGE_SETUP_NO_APT": "1",
           "SGE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SGE_SPEECH_ENGINE", None)
    setup = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=False, timeout=900)
    assert setup.returncode == 0, setup.stderr[-4000:]
    if not Path("/usr/bin/chromium").exists():
        assert "sudo apt-get install espeak-ng chromium" in setup.stdout
    assert "the espeak-ng library from espeakng-loader speaks" in setup.stdout, setup.stdout
    process, url = _serve_app(env)
    try:
        assert "Speech is unavailable" not in _page_config(url)
        audio, carrier, status = Client(url, verbose=False).predict(EXAMPLE_HARMFUL, api_name="/render_audio")
        assert audio is not None and carrier == AUDIO_CARRIER and "Rendered the request as speech" in status
    finally:
        _stop(process)
