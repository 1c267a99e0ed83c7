"""Speak a request with espeak-ng, the way a model wants to hear it: a natural sentence, or one word per slot.

Why a module of its own: speech has its own cache (keyed by everything that changes the waveform, the engine and
its version included), its own external program (`explorer.inputs.speech_engine` picks the `espeak-ng` command or the
espeak-ng library) and its own limit, the model's audio window, which a long request must fit whole.

>>> audio = render_audio("How do I bake bread?")          # doctest: +SKIP
>>> audio.dtype, audio.ndim                                # doctest: +SKIP
(dtype('float32'), 1)
"""

from __future__ import annotations

import hashlib
import logging
import string
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import soundfile as sf

from explorer.core.storage import (
    atomic_path,
    cache_bound,
    cache_root,
    mark_used,
    prune_cache,
)
from explorer.core.vocab import SAMPLE_RATE, check_choice
from explorer.inputs.speech_engine import (
    SpeechSettings,
    SpeechUnavailableError,
    speech_engine,
    speech_unavailable_reason,
)
from explorer.inputs.uploads import MIN_AUDIO_SECONDS, resample

__all__ = ["AUDIO_STYLES", "SPEECH_RATES_WPM", "AudioStyle", "SpeechUnavailableError", "prompt_words", "render_audio",
           "speak", "speech_unavailable_reason"]

logger = logging.getLogger(__name__)

AudioStyle = Literal["sentence", "slots"]
AUDIO_STYLES: tuple[str, ...] = get_args(AudioStyle)

# espeak-ng settings are fixed so that the same text always gives the same waveform.
_ESPEAK_VOICE = "en-us"
_ESPEAK_SPEED_WPM = 160
#: Faster rates tried, in order, when a long request spoken at 160 wpm would not fit the model's audio window:
#: 240 wpm is about the fastest rate at which people (and ASR-trained encoders) still follow speech well.
_FASTER_SPEEDS_WPM = (200, 240)
#: Every rate a sentence may be spoken at (a speech reader trains on all of them).
SPEECH_RATES_WPM = (_ESPEAK_SPEED_WPM, *_FASTER_SPEEDS_WPM)
_ESPEAK_PITCH = 50
_ESPEAK_AMPLITUDE = 100
_SILENCE_THRESHOLD = 0.01  # relative to the clip's peak (-40 dB): used to trim silence around a word


def prompt_words(instruction: str) -> list[str]:
    """The words of an instruction as rendered: punctuation stripped, a final "?" kept on the last word.

    Shared by the image grid and the audio slots, so cell i of the image and slot i of the audio hold
    the same word.
    """
    text = instruction.strip()
    question = text.endswith("?")
    table = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u00bf\u00a1")
    words = [w for w in (raw.translate(table) for raw in text.split()) if w]
    if not words:
        raise ValueError(f"instruction {instruction!r} has no words to render")
    if question:
        words[-1] += "?"
    return words


# --------------------------------------------------------------------------------------------------
# Spoken audio


def _default_cache_dir() -> Path:
    return cache_root() / "audio"


def _espeak_version() -> str:
    """The engine that speaks now and its version (the cache key's part): `espeak-ng --version`'s line for the
    command, "espeak-ng library 1.52.0 (espeakng-loader …)" for the library. Raises SpeechUnavailableError."""
    return speech_engine().version


def speak(text: str, words_per_minute: int = _ESPEAK_SPEED_WPM) -> np.ndarray:
    """One utterance, uncached, in the app's voice → float32 mono at SAMPLE_RATE."""
    settings = SpeechSettings(_ESPEAK_VOICE, words_per_minute, _ESPEAK_PITCH, _ESPEAK_AMPLITUDE)
    audio, rate = speech_engine().speak(text, settings)
    return resample(audio, rate, SAMPLE_RATE)


def _trim_silence(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio[:0]
    loud = np.flatnonzero(np.abs(audio) > _SILENCE_THRESHOLD * peak)
    return audio[loud[0] : loud[-1] + 1]


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Time-compress a clip to exactly `length` samples (band-limited, so no aliasing)."""
    try:
        from scipy.signal import resample
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        positions = np.linspace(0, len(audio) - 1, length)
        return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)
    return np.asarray(resample(audio, length), dtype=np.float32)


def render_audio(
    instruction: str,
    style: AudioStyle = "sentence",
    slot_seconds: float = 0.4,
    cache_dir: Path | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Speak the instruction with espeak-ng (`explorer.inputs.speech_engine` says which); float32 mono at 16 kHz.

    "sentence" speaks it naturally. "slots" speaks each word alone, trims its silence, squeezes it into
    `slot_seconds` if longer and pads it with zeros to exactly that length: word i then always starts at
    i × slot_seconds, the word-aligned layout the built-in demo model hears. Results are cached on disk,
    keyed by everything that changes the waveform (text, style, slot, speed, the engine with its version, settings).
    Without any engine it raises SpeechUnavailableError, whose message says what to install.

    `max_seconds` is the model's audio window (what its feature extractor keeps; beyond it the rest would be cut
    without a word): a sentence too long for it at 160 wpm is spoken faster (200, then 240 wpm), whole; one that
    does not fit even then, or slots that do not fit, raise ValueError saying so — never a silent cut.
    """
    check_choice("audio style", style, AUDIO_STYLES)
    slot_samples = round(slot_seconds * SAMPLE_RATE)
    if style == "slots" and slot_samples < 1:
        raise ValueError(f"slot_seconds must be at least {1 / SAMPLE_RATE:.6f} s, got {slot_seconds!r}")
    words = prompt_words(instruction)
    if style == "slots" and max_seconds is not None and len(words) * slot_seconds > max_seconds + 1e-9:
        raise ValueError(
            f"the request has {len(words)} words, {len(words) * slot_seconds:.1f} s at {slot_seconds} s per word, "
            f"but this model hears at most {max_seconds:g} s of audio; shorten it or split it into several items"
        )
    if style == "sentence":
        speeds = (_ESPEAK_SPEED_WPM,) + (_FASTER_SPEEDS_WPM if max_seconds is not None else ())
        for speed in speeds:
            audio = _cached_speech(instruction, words, style, slot_seconds, speed, cache_dir)
            if len(audio) < MIN_AUDIO_SECONDS * SAMPLE_RATE:  # e.g. "·": no model takes a clip that short
                raise ValueError(f"{instruction[:60]!r} gives almost no speech ({len(audio) / SAMPLE_RATE * 1000:.0f} "
                                 "ms); type words to speak")
            if max_seconds is None or len(audio) <= max_seconds * SAMPLE_RATE:
                if speed != _ESPEAK_SPEED_WPM:
                    logger.info("spoken at %d wpm to fit the model's %g s audio window: %.60s", speed, max_seconds,
                                instruction)
                return audio
        raise ValueError(
            f"the request ({len(words)} words) lasts {len(audio) / SAMPLE_RATE:.1f} s even spoken at "
            f"{speeds[-1]} wpm, but this model hears at most {max_seconds:g} s of audio; "
            "shorten it or split it into several items"
        )
    return _cached_speech(instruction, words, style, slot_seconds, _ESPEAK_SPEED_WPM, cache_dir)


def _cached_speech(
    instruction: str, words: list[str], style: AudioStyle, slot_seconds: float, speed: int, cache_dir: Path | None
) -> np.ndarray:
    slot_samples = round(slot_seconds * SAMPLE_RATE)
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    settings = f"{_ESPEAK_VOICE}|{speed}|{_ESPEAK_PITCH}|{_ESPEAK_AMPLITUDE}|{_SILENCE_THRESHOLD}"
    fields = [instruction, style, repr(float(slot_seconds)) if style == "slots" else "", _espeak_version(), settings]
    key = hashlib.sha256("\x00".join(fields).encode("utf-8")).hexdigest()
    cached = _read_cache(cache_dir / f"{key}.wav")
    if cached is not None:
        return cached

    if style == "sentence":
        audio = speak(" ".join(words), speed)
    else:
        slots = []
        for word in words:
            spoken = _trim_silence(speak(word.rstrip("?")))
            if len(spoken) > slot_samples:
                spoken = _fit_length(spoken, slot_samples)
            slots.append(np.pad(spoken, (0, slot_samples - len(spoken))))
        audio = np.concatenate(slots)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    _write_cache(cache_dir / f"{key}.wav", audio)
    return audio


def _read_cache(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        data, rate = sf.read(path, dtype="float32")
    except (sf.LibsndfileError, RuntimeError, OSError):
        logger.warning("ignoring unreadable audio cache file %s", path)
        return None
    if rate != SAMPLE_RATE or data.ndim != 1:
        return None
    mark_used(path)  # the speech cache is pruned least recently used first, also on noatime mounts
    return data


def _write_cache(path: Path, audio: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp:
            sf.write(tmp, audio, SAMPLE_RATE, subtype="FLOAT", format="WAV")
        prune_cache(path.parent, cache_bound("audio"), keep=[path], pattern="*.wav")  # LRU, storage.CACHE_BOUNDS
    except OSError as err:  # a read-only cache must not stop rendering
        logger.warning("could not write audio cache %s: %s", path, err)
