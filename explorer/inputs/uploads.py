"""Open user media safely: uploaded or listed images and audio, bounded before they are decoded.

Why its own module: this is the trust boundary. Everything a visitor or a prompt file hands the explorer passes
through `load_image` / `load_audio`, which check sizes from headers before decoding (decompression bombs),
normalise formats (EXIF orientation, transparency, integer PCM, stereo) and turn every failure into a
`MediaError` whose message says what is wrong with the file.
"""

from __future__ import annotations

import io
import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError

from explorer.core.vocab import SAMPLE_RATE

__all__ = [
    "AUDIO_RATES", "IMAGE_FORMATS", "MAX_FILE_BYTES", "MAX_IMAGE_SIDE", "MIN_AUDIO_SECONDS", "MediaError",
    "check_audio_length", "load_audio", "load_image", "resample",
]

MAX_IMAGE_SIDE = 1536
#: Largest media file opened (bytes): the app's upload limit (`max_file_size`, 20 MB); checked from the file's
#: size before a byte is read.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: The only image formats decoded: the common photo and screenshot formats. Pillow knows many more, some handled
#: by outside programs (EPS goes to Ghostscript), which no visitor's file should reach.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: Sample rates accepted (Hz), from telephone speech to studio audio. A rate outside is refused before any
#: resampling: a polyphase filter's length grows with the rate (160 frames at 1,000,003 Hz once cost ~1 GB).
AUDIO_RATES = (1_000, 384_000)
#: Shortest clip accepted: Qwen2-Audio's encoder needs two audio tokens (~80 ms at 16 kHz) or it takes a legacy
#: path that fails inside transformers; no spoken request is shorter than 0.1 s.
MIN_AUDIO_SECONDS = 0.1
#: Largest denominator of the resampling ratio: a ratio like 16000/44101 is rounded to the nearest fraction with a
#: denominator at most this (pitch error < 0.01%), so the filter never has more than ~20 x this many taps.
_MAX_RATIO_DENOMINATOR = 1_000
_READ_BLOCK_FRAMES = 1 << 16  # frames decoded at a time: a many-channel file is mixed down block by block


class MediaError(ValueError):
    """User media (image or audio) could not be used; the message says what is wrong with it."""


def load_image(
    source: str | Path | bytes | Image.Image, max_pixels: int = 20_000_000, name: str | None = None
) -> Image.Image:
    """Open user image data safely: RGB, longest side at most MAX_IMAGE_SIDE.

    `name` is how messages call the file (the user's own file name, not a server path); default: the path.

    The pixel count is checked from the header before decoding, so a small file that claims a huge
    size (a decompression bomb) is rejected without allocating it. Big but allowed images are
    downsized, since vision encoders resize anyway and large inputs only cost memory.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "image")
        return _to_rgb_bounded(source)
    name = name or ("uploaded image" if isinstance(source, bytes) else Path(source).name)
    data = source if isinstance(source, bytes) else _read_bounded(Path(source), name, "image")
    if not data:
        raise MediaError(f"{name} is empty")
    if len(data) > MAX_FILE_BYTES:
        raise MediaError(_too_big(name, len(data)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
                _check_pixels(probe.size, max_pixels, name)
                probe.verify()
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                image.load()
                return _to_rgb_bounded(image)
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise MediaError(f"{name} is too large to decode safely ({err})") from err
        except UnidentifiedImageError as err:
            raise MediaError(f"{name} is not an image this app opens (use PNG, JPEG, WebP, GIF, BMP or TIFF)") from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise MediaError(f"{name} is corrupt or truncated: {err}") from err


def _too_big(name: str, size: int) -> str:
    return f"{name} is {size / 1e6:.1f} MB, over the limit of {MAX_FILE_BYTES / 1e6:.0f} MB; send a smaller file"


def _file_size(path: Path, name: str, kind: str) -> int:
    """The file's size in bytes, checked against MAX_FILE_BYTES before it is opened."""
    try:
        size = path.stat().st_size
    except OSError:
        raise MediaError(f"{kind} file not found: {name}") from None
    if not path.is_file():
        raise MediaError(f"{kind} file not found: {name}")
    if size > MAX_FILE_BYTES:
        raise MediaError(_too_big(name, size))
    return size


def _read_bounded(path: Path, name: str, kind: str) -> bytes:
    """A media file's bytes, its size checked first (and never more than MAX_FILE_BYTES + 1 bytes read, should it
    grow in between)."""
    _file_size(path, name, kind)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise MediaError(f"{name} could not be read ({type(err).__name__})") from err
    if len(data) > MAX_FILE_BYTES:
        raise MediaError(_too_big(name, len(data)))
    return data


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise MediaError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f}; resize it before uploading"
        )
    if width < 1 or height < 1:
        raise MediaError(f"{name} has no pixels ({width}x{height})")


def _to_rgb_bounded(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)  # phone photos: honour the orientation tag
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white (the typographic background), not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    return image


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`audio` at `rate` Hz resampled to `target` Hz (polyphase, band-limited), as float32.

    The ratio target/rate is taken as the nearest fraction whose denominator is at most 1,000, so the filter stays
    small whatever the rate (an exact coprime ratio such as 16000/1000003 would need a filter of ~20 million taps);
    for the rates people record at (8, 11.025, 22.05, 44.1, 48, 96 kHz ...) the fraction is exact.
    """
    if rate == target:
        return audio.astype(np.float32, copy=False)
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        length = math.ceil(len(audio) * target / rate)
        positions = np.arange(length) * (rate / target)
        return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)
    ratio = Fraction(target, rate).limit_denominator(_MAX_RATIO_DENOMINATOR)
    return np.asarray(resample_poly(audio, ratio.numerator, ratio.denominator), dtype=np.float32)


def _int_to_float(data: np.ndarray) -> np.ndarray:
    if np.issubdtype(data.dtype, np.unsignedinteger):
        half = (np.iinfo(data.dtype).max + 1) / 2
        return ((data.astype(np.float64) - half) / half).astype(np.float32)
    if np.issubdtype(data.dtype, np.integer):
        return (data.astype(np.float64) / -float(np.iinfo(data.dtype).min)).astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32)
    raise MediaError(f"audio samples must be integers or floats, got dtype {data.dtype}")


def load_audio(
    source: str | Path | bytes | tuple[int, np.ndarray], max_seconds: float = 30.0, name: str | None = None
) -> tuple[np.ndarray, str | None]:
    """Decode user audio to float32 mono at 16 kHz in [-1, 1]; returns (audio, notice or None).

    Accepts a file path or bytes (WAV, FLAC, OGG; whatever libsndfile reads) or a (rate, samples) pair
    as Gradio delivers it (int16 samples are scaled to [-1, 1]). Clips over `max_seconds` are cut before
    resampling, so a long upload costs little, and the notice says so, so the UI can tell the user
    rather than silently dropping speech. What a file may cost is bounded before it is decoded: its size
    (MAX_FILE_BYTES), its sample rate (AUDIO_RATES), and the frames read (`max_seconds`, mixed down to mono a
    block at a time, whatever the channel count). A clip shorter than MIN_AUDIO_SECONDS is refused.
    """
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    if isinstance(source, tuple):
        rate, mono, total_frames = _audio_from_array(source)
        name = name or "the audio"
    else:
        name = name or ("uploaded audio" if isinstance(source, bytes) else Path(source).name)
        rate, mono, total_frames = _audio_from_file(source, max_seconds, name)
    if total_frames == 0 or mono.size == 0:
        raise MediaError(f"{name} is empty (0 samples); record or upload a clip with sound")
    if not np.all(np.isfinite(mono)):
        raise MediaError(f"{name} contains NaN or infinite samples")
    check_audio_length(total_frames / rate, name)
    notice = None
    max_frames = int(max_seconds * rate)
    if total_frames > max_frames:
        mono = mono[:max_frames]
        notice = f"Audio trimmed from {total_frames / rate:.1f} s to {max_seconds:.1f} s"
    return np.clip(resample(mono, rate, SAMPLE_RATE), -1.0, 1.0), notice


def check_audio_length(seconds: float, name: str = "the audio") -> None:
    """Refuse a clip shorter than MIN_AUDIO_SECONDS (models need a few audio tokens; see the constant)."""
    if seconds < MIN_AUDIO_SECONDS:
        raise MediaError(f"{name} lasts {seconds * 1000:.1f} ms; give at least {MIN_AUDIO_SECONDS * 1000:.0f} ms "
                         "of sound (a spoken request)")


def _check_rate(rate: object, name: str) -> int:
    low, high = AUDIO_RATES
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not low <= int(rate) <= high:
        raise MediaError(f"{name} has a sample rate of {rate!r} Hz; this app takes {low:,}..{high:,} Hz "
                         "(e.g. 16,000, 44,100 or 48,000): convert the clip first")
    return int(rate)


def _audio_from_array(source: tuple[int, np.ndarray]) -> tuple[int, np.ndarray, int]:
    if len(source) != 2:
        raise MediaError("audio tuple must be (sample_rate, samples)")
    rate, samples = source
    rate = _check_rate(rate, "the audio")
    data = _int_to_float(np.asarray(samples))
    if data.ndim == 2:
        # Gradio gives (frames, channels); accept (channels, frames) when that is clearly the layout.
        if data.shape[0] <= 8 < data.shape[1]:
            data = data.T
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise MediaError(f"audio samples must be 1-D or (frames, channels), got shape {data.shape}")
    return rate, data.astype(np.float32, copy=False), len(data)


def _audio_from_file(source: str | Path | bytes, max_seconds: float, name: str) -> tuple[int, np.ndarray, int]:
    """(rate, mono samples of at most max_seconds, frames in the whole file)."""
    if isinstance(source, bytes):
        if not source:
            raise MediaError(f"{name} is empty (0 bytes)")
        if len(source) > MAX_FILE_BYTES:
            raise MediaError(_too_big(name, len(source)))
        opened: Any = io.BytesIO(source)
    else:
        _file_size(Path(source), name, "audio")
        opened = str(source)
    try:
        with sf.SoundFile(opened) as handle:
            rate = _check_rate(handle.samplerate, name)
            keep = int(max_seconds * rate)
            blocks, kept = [], 0
            while kept < keep:  # a block at a time: never more than one block of all its channels in memory
                block = handle.read(frames=min(_READ_BLOCK_FRAMES, keep - kept), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block.mean(axis=1))
                kept += len(block)
            total = handle.frames if handle.frames > 0 else kept
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        formats = ", ".join(sorted(sf.available_formats()))
        detail = str(err) if isinstance(source, bytes) else str(err).replace(str(source), name)  # no server paths
        raise MediaError(
            f"{name} could not be decoded as audio ({detail}); supported formats: {formats}"
        ) from err
    mono = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return rate, mono, max(total, len(mono))
