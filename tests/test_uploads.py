"""Tests for explorer.inputs.uploads: user images and audio are bounded, normalised, and refused with a clear message."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from explorer.inputs.uploads import MediaError, load_audio, load_image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def test_load_image_rejects_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image", encoding="utf-8")
    with pytest.raises(MediaError, match="not an image"):
        load_image(path)


def test_load_image_rejects_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = _png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="corrupt or truncated"):
        load_image(path)


def test_load_image_rejects_50_megapixels_before_decoding() -> None:
    with pytest.raises(MediaError, match=r"10000x5000 = 50\.0 megapixels.*limit of 20\.0"):
        load_image(_png_claiming_size(10_000, 5_000))


def test_load_image_maps_pillow_bomb_error() -> None:
    with pytest.raises(MediaError, match="too large"):
        load_image(_png_claiming_size(30_000, 30_000), max_pixels=10**12)


def test_load_image_converts_and_downsizes(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3000, 1000), (0, 0, 0, 0))
    path = tmp_path / "big.png"
    rgba.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (1536, 512)
    assert np.asarray(image).min() == 255  # transparent → white, not black
    small = Image.new("L", (40, 30), 7)
    assert load_image(_png_bytes(small)).getpixel((0, 0)) == (7, 7, 7)
    assert load_image(small).size == (40, 30)
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_load_audio_trims_long_clip_with_notice(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.full(40 * 8_000, 0.1, dtype=np.float32), 8_000)
    audio, notice = load_audio(path, max_seconds=30.0)
    assert notice == "Audio trimmed from 40.0 s to 30.0 s"
    assert len(audio) == 30 * 16_000 and audio.dtype == np.float32
    short, none = load_audio(path, max_seconds=60.0)
    assert none is None and len(short) == 40 * 16_000


def test_load_audio_rejects_garbage_mp3(tmp_path: Path) -> None:
    path = tmp_path / "song.mp3"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(MediaError, match=r"song\.mp3 could not be decoded as audio"):
        load_audio(path)


def test_load_audio_resamples_and_mixes_to_mono(tmp_path: Path) -> None:
    t = np.arange(44_100) / 44_100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([tone, tone], axis=1), 44_100)
    audio, notice = load_audio(path)
    assert notice is None and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 16_000
    assert abs(np.sqrt(np.mean(audio[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01
    from_bytes, _ = load_audio(path.read_bytes())
    np.testing.assert_allclose(from_bytes, audio)


def test_load_audio_tuple_int16_is_scaled() -> None:
    samples = np.array([[32767, -32768]] * 16_000, dtype=np.int16)  # (frames, channels) like Gradio
    audio, _ = load_audio((16_000, samples))
    assert audio.shape == (16_000,) and audio.dtype == np.float32
    np.testing.assert_allclose(audio, -0.5 / 32768, atol=1e-7)
    full, _ = load_audio((16_000, np.full(1_600, -32768, dtype=np.int16)))
    assert full.min() == -1.0


def test_load_audio_rejects_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(MediaError, match="empty"):
        load_audio(path)
    with pytest.raises(MediaError, match="empty"):
        load_audio((16_000, np.zeros(0, dtype=np.int16)))
