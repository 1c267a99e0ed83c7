"""Which program speaks for `explorer.inputs.speech`: the `espeak-ng` command, or the espeak-ng library from PyPI.

Why two engines: Debian's `espeak-ng` command (1.51, `apt-get install espeak-ng`) is the engine the demo model's
speech was rendered with, so it gives the demo's training waveforms exactly; it needs root to install. The
`espeakng-loader` wheel (in requirements.txt) ships the espeak-ng *library* (1.52) with its voice data, so a plain
`pip install` can speak: `espeak_library.py` wraps it in a command that takes the same options, so both engines
run the same way, one fresh process per utterance. 1.52 speaks most text sample for sample like 1.51, not all of
it (README, "Set up, run, test"); the speech cache keeps the two apart.

`SGE_SPEECH_ENGINE` picks one: `auto` (default: the command when it is on PATH, else the library), `espeak-ng`,
`library`, or `none` (speech unavailable: what a bare machine without either looks like).

>>> speech_engine_choice({"SGE_SPEECH_ENGINE": "none"})
'none'
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import soundfile as sf

from explorer.core.vocab import check_choice

__all__ = [
    "ENGINE_ENV",
    "INSTALL_COMMAND",
    "PIP_COMMAND",
    "EngineChoice",
    "SpeechEngine",
    "SpeechSettings",
    "SpeechUnavailableError",
    "speech_engine",
    "speech_engine_choice",
    "speech_unavailable_reason",
]

EngineChoice = Literal["auto", "espeak-ng", "library", "none"]
ENGINE_ENV = "SGE_SPEECH_ENGINE"
#: What gives a machine speech: Debian's engine (the demo's own waveforms), or the library wheel.
INSTALL_COMMAND = "sudo apt-get install espeak-ng"
PIP_COMMAND = ".venv/bin/pip install espeakng-loader"

logger = logging.getLogger(__name__)


class SpeechUnavailableError(RuntimeError):
    """No speech engine can run here; the message says how to get one."""


@dataclass(frozen=True)
class SpeechSettings:
    """What the command's `-v`, `-s`, `-p` and `-a` set: every engine speaks with exactly these."""

    voice: str
    words_per_minute: int
    pitch: int
    amplitude: int


# --------------------------------------------------------------------------------------------------
# The engines: a command each, run once per utterance with the same options


class SpeechEngine:
    """A way to run espeak-ng: a command line that takes espeak-ng's `--stdin --stdout -z -v -s -p -a`.

    `version` names the engine and its version: part of the speech cache key, so that waveforms of different
    engines never mix."""

    def __init__(self, name: str, command: Sequence[str], version: str) -> None:
        self.name, self.command, self.version = name, tuple(command), version

    def speak(self, text: str, settings: SpeechSettings) -> tuple[np.ndarray, int]:
        """→ (float32 mono samples in [-1, 1], sample rate) for `text`, with no pause after it (`-z`). The text
        goes via stdin, so it is never read as an option."""
        command = [*self.command, "--stdin", "--stdout", "-z", "-v", settings.voice,
                   "-s", str(settings.words_per_minute), "-p", str(settings.pitch), "-a", str(settings.amplitude)]
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, check=False, timeout=60)
        if result.returncode != 0 or not result.stdout:
            raise RuntimeError(f"{self.name} failed for {text!r}: {result.stderr.decode(errors='replace').strip()}")
        data, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
        return data.mean(axis=1), int(rate)


@lru_cache(maxsize=8)
def command_version(binary: str) -> str:
    """`espeak-ng --version`'s line, e.g. "eSpeak NG text-to-speech: 1.51  Data at: …" (the cache key's part)."""
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.strip()


@lru_cache(maxsize=8)
def _command_engine(binary: str) -> SpeechEngine:
    return SpeechEngine("espeak-ng", [binary], command_version(binary))


@lru_cache(maxsize=1)
def _library_engine() -> SpeechEngine | None:
    """libespeak-ng from the `espeakng-loader` wheel, behind `espeak_library.py` (None when not installed)."""
    try:
        import espeakng_loader
    except ImportError:
        return None
    command = [sys.executable, "-I", "-S", str(Path(__file__).with_name("espeak_library.py")),
               "--library", espeakng_loader.get_library_path(),
               "--path", str(Path(espeakng_loader.get_data_path()).parent)]
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        logger.warning("the espeak-ng library from espeakng-loader does not run: %s", result.stderr.strip())
        return None
    version = f"{result.stdout.strip()} (espeakng-loader {metadata.version('espeakng-loader')})"
    return SpeechEngine("espeak-ng library", command, version)


# --------------------------------------------------------------------------------------------------
# Choosing one


def speech_engine_choice(environ: Mapping[str, str] | None = None) -> EngineChoice:
    """The engine `SGE_SPEECH_ENGINE` asks for (`auto` when unset); a bad value raises ValueError."""
    value = (os.environ if environ is None else environ).get(ENGINE_ENV, "").strip() or "auto"
    check_choice(ENGINE_ENV, value, get_args(EngineChoice))
    return value  # type: ignore[return-value]


def speech_engine() -> SpeechEngine:
    """The engine that speaks now (`SGE_SPEECH_ENGINE`, PATH and the installed wheel are read on every call).
    Raises SpeechUnavailableError, saying how to get one, when none can."""
    choice = speech_engine_choice()
    binary = shutil.which("espeak-ng") if choice in ("auto", "espeak-ng") else None
    if binary is not None:
        return _command_engine(binary)
    if choice in ("auto", "library"):
        engine = _library_engine()
        if engine is not None:
            return engine
    raise SpeechUnavailableError(_unavailable_message(choice))


def speech_unavailable_reason() -> str | None:
    """None when speech can be rendered here, else the message that says why not and what to install."""
    try:
        speech_engine()
    except SpeechUnavailableError as err:
        return str(err)
    return None


def _unavailable_message(choice: EngineChoice) -> str:
    how = f"install it with `{INSTALL_COMMAND}` (the engine the demo was trained on) or `{PIP_COMMAND}`"
    if choice == "none":
        return f"speech is unavailable: {ENGINE_ENV}=none turns it off; unset it and {how}"
    if choice == "espeak-ng":
        return (f"speech is unavailable: {ENGINE_ENV}=espeak-ng but no espeak-ng program is on PATH; "
                f"install it with `{INSTALL_COMMAND}`")
    if choice == "library":
        return f"speech is unavailable: {ENGINE_ENV}=library but espeakng-loader is not installed; `{PIP_COMMAND}`"
    return (f"speech is unavailable: espeak-ng is needed to render audio prompts, but no espeak-ng program is on PATH "
            f"and the espeak-ng library (espeakng-loader) is not installed; {how}")
