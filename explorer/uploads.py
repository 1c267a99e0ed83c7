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
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError

from .vocab import SAMPLE_RATE

__all__ = ["MAX_IMAGE_SIDE", "MediaError", "load_audio", "load_image", "resample"]

MAX_IMAGE_SIDE = 1536


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
    name = name or ("uploaded image" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes):
        if not Path(source).is_file():
            raise MediaError(f"image file not found: {name}")
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise MediaError(f"{name} could not be read ({type(err).__name__})") from err
    else:
        data = source
    if not data:
        raise MediaError(f"{name} is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                _check_pixels(probe.size, max_pixels, name)
                probe.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return _to_rgb_bounded(image)
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise MediaError(f"{name} is too large to decode safely ({err})") from err
        except UnidentifiedImageError as err:
            raise MediaError(f"{name} is not an image Pillow can read (use PNG, JPEG, WebP, GIF or BMP)") from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise MediaError(f"{name} is corrupt or truncated: {err}") from err


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
    """`audio` at `rate` Hz resampled to `target` Hz (polyphase, band-limited), as float32."""
    if rate == target:
        return audio.astype(np.float32, copy=False)
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        length = math.ceil(len(audio) * target / rate)
        positions = np.arange(length) * (rate / target)
        return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)
    divisor = math.gcd(rate, target)
    return np.asarray(resample_poly(audio, target // divisor, rate // divisor), dtype=np.float32)


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
    rather than silently dropping speech.
    """
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    if isinstance(source, tuple):
        rate, mono, total_frames = _audio_from_array(source)
    else:
        rate, mono, total_frames = _audio_from_file(source, max_seconds, name)
    if total_frames == 0 or mono.size == 0:
        raise MediaError("audio is empty (0 samples); record or upload a clip with sound")
    if not np.all(np.isfinite(mono)):
        raise MediaError("audio contains NaN or infinite samples")
    notice = None
    max_frames = int(max_seconds * rate)
    if total_frames > max_frames:
        mono = mono[:max_frames]
        notice = f"Audio trimmed from {total_frames / rate:.1f} s to {max_seconds:.1f} s"
    return np.clip(resample(mono, rate, SAMPLE_RATE), -1.0, 1.0), notice


def _audio_from_array(source: tuple[int, np.ndarray]) -> tuple[int, np.ndarray, int]:
    if len(source) != 2:
        raise MediaError("audio tuple must be (sample_rate, samples)")
    rate, samples = source
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise MediaError(f"audio sample rate must be a positive int, got {rate!r}")
    data = _int_to_float(np.asarray(samples))
    if data.ndim == 2:
        # Gradio gives (frames, channels); accept (channels, frames) when that is clearly the layout.
        if data.shape[0] <= 8 < data.shape[1]:
            data = data.T
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise MediaError(f"audio samples must be 1-D or (frames, channels), got shape {data.shape}")
    return int(rate), data.astype(np.float32, copy=False), len(data)


def _audio_from_file(source: str | Path | bytes, max_seconds: float, name: str | None) -> tuple[int, np.ndarray, int]:
    name = name or ("uploaded audio" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise MediaError(f"audio file not found: {name}")
    if isinstance(source, bytes) and not source:
        raise MediaError("uploaded audio is empty (0 bytes)")
    opened = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with sf.SoundFile(opened) as handle:
            rate, total = handle.samplerate, handle.frames
            # Read only what is kept; seekable formats report their length up front.
            frames = min(total, int(max_seconds * rate)) if total > 0 else -1
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        formats = ", ".join(sorted(sf.available_formats()))
        detail = str(err) if isinstance(source, bytes) else str(err).replace(str(source), name)  # no server paths
        raise MediaError(
            f"{name} could not be decoded as audio ({detail}); supported formats: {formats}"
        ) from err
    if total <= 0:
        total = len(data)
    return rate, data.mean(axis=1), total
