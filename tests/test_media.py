"""Tests for explorer.inputs.media: typographic images, spoken audio, render() and Prompt."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from needs import needs_speech
from PIL import Image

import explorer.inputs.speech as speech_module
from explorer.inputs.data import Instruction
from explorer.inputs.media import (
    AUDIO_CARRIER,
    DEFAULT_LAYOUT,
    IMAGE_CARRIER,
    GridLayout,
    ImageLayout,
    Prompt,
    prompt_words,
    render,
    render_audio,
    render_image,
)

# A word grid with one 64 px cell per word (the demo model's, as its manifest stores it).
WORD_GRID = GridLayout(cols=4, rows=4, cell_width=64, cell_height=64, font_size=11, margin=0)

needs_espeak = needs_speech


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_prompt_words_strip_punctuation_keep_final_question_mark() -> None:
    assert prompt_words("Hello, world! How are you?") == ["Hello", "world", "How", "are", "you?"]
    assert prompt_words("Bake some bread.") == ["Bake", "some", "bread"]
    with pytest.raises(ValueError, match="no words"):
        prompt_words(" ?! ")


@pytest.mark.parametrize("layout", [WORD_GRID, DEFAULT_LAYOUT])
def test_render_image_is_deterministic_sized_and_grey(layout: ImageLayout) -> None:
    text = "How can I shoot a good photo at night?"
    first, second = render_image(text, layout), render_image(text, layout)
    assert first.mode == "RGB"
    assert first.size == layout.size
    assert first.tobytes() == second.tobytes()
    assert _png_bytes(first) == _png_bytes(second)
    pixels = np.asarray(first)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.min() < 100 and pixels.max() == 255  # dark text on a white background
    assert first.tobytes() != render_image("How can I shoot a good photo at noon?", layout).tobytes()


def test_layout_sizes() -> None:
    assert WORD_GRID.size == (256, 256) and WORD_GRID.cell_width == WORD_GRID.cell_height == 64
    # an unknown model's default: a square (no resize, crop or tiling of any family cuts a square's text off)
    assert DEFAULT_LAYOUT.size == (448, 448) and DEFAULT_LAYOUT.min_font_size == 12


def test_render_image_words_land_in_their_cells() -> None:
    image = np.asarray(render_image("one two three", WORD_GRID))[..., 0]
    cell = WORD_GRID.cell_width
    cells = image.reshape(4, cell, 4, cell).min(axis=(1, 3))  # darkest pixel per cell, [row, col]
    inked = cells < 128
    assert inked[0, :3].all() and not inked[0, 3] and not inked[1:].any()


def test_render_image_long_word_is_shrunk_to_fit_its_cell() -> None:
    image = np.asarray(render_image("cryptocurrency x", WORD_GRID))[..., 0]
    cell = WORD_GRID.cell_width
    assert image[:, cell : 2 * cell].min() < 128  # second word drawn in cell (0, 1)
    # the 14-letter word is drawn smaller so it stays inside its own cell: both edge columns stay white
    assert image[:, 2 : cell - 2].min() < 128
    assert image[:, 0].min() == 255 and image[:, cell - 1].min() == 255


def test_render_image_ignores_punctuation() -> None:
    plain = render_image("Bake some bread", WORD_GRID).tobytes()
    assert render_image("Bake, some bread.", WORD_GRID).tobytes() == plain


def test_render_image_too_many_words() -> None:
    text = " ".join(["word"] * 17)
    render_image(" ".join(["word"] * 16), WORD_GRID)
    with pytest.raises(ValueError, match="17 words.*at most 16"):
        render_image(text, WORD_GRID)


def test_grid_layout_validates() -> None:
    with pytest.raises(ValueError, match="cols"):
        GridLayout(cols=0, rows=4, cell_width=32, cell_height=32, font_size=5)


@needs_espeak
def test_render_audio_sentence(tmp_path: Path) -> None:
    audio = render_audio("How do I bake bread?", cache_dir=tmp_path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 * 16_000 < len(audio) < 4 * 16_000  # a short sentence at 16 kHz
    assert 0.05 < np.abs(audio).max() <= 1.0
    assert len(list(tmp_path.glob("*.wav"))) == 1
    again = render_audio("How do I bake bread?", cache_dir=tmp_path)
    np.testing.assert_array_equal(audio, again)
    assert not list(tmp_path.glob(".tmp-*"))


@needs_espeak
def test_render_audio_is_deterministic_without_cache(tmp_path: Path) -> None:
    a = render_audio("Plant tomatoes in spring.", cache_dir=tmp_path / "a")
    b = render_audio("Plant tomatoes in spring.", cache_dir=tmp_path / "b")
    np.testing.assert_array_equal(a, b)


@needs_espeak
@pytest.mark.parametrize("slot_seconds", [0.4, 0.25])
def test_render_audio_slots_are_word_aligned(tmp_path: Path, slot_seconds: float) -> None:
    text = "Explain photosynthesis in simple words?"
    audio = render_audio(text, style="slots", slot_seconds=slot_seconds, cache_dir=tmp_path)
    slot = round(slot_seconds * 16_000)
    assert audio.dtype == np.float32
    assert len(audio) == 5 * slot
    for index in range(5):  # every slot starts with speech (leading silence trimmed)
        chunk = audio[index * slot : (index + 1) * slot]
        assert np.abs(chunk[:400]).max() > 0.01, index


@needs_espeak
def test_render_audio_rejects_bad_style(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sentence.*slots"):
        render_audio("Hi.", style="words", cache_dir=tmp_path)  # type: ignore[arg-type]


def test_render_audio_without_a_speech_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from explorer.inputs.speech_engine import SpeechUnavailableError

    monkeypatch.setenv("SGE_SPEECH_ENGINE", "none")
    with pytest.raises(SpeechUnavailableError, match="apt-get install espeak-ng"):
        render_audio("Hello there.", cache_dir=tmp_path)


def test_render_text_and_image() -> None:
    item = Instruction("x-1", "How do I bake bread?", "harmless", "cooking", "evaluation")
    text = render(item, "text")
    assert text.text == item.instruction and text.image is None and text.audio is None
    image = render("How do I bake bread?", "image", image_layout=WORD_GRID)
    assert image.text == IMAGE_CARRIER and image.modality == "image"
    assert image.image is not None and image.image.size == WORD_GRID.size
    assert image == render(item, "image", image_layout=WORD_GRID)
    assert image.key != text.key and len(image.key) == 64
    with pytest.raises(ValueError, match="text.*image.*audio"):
        render(item, "video")  # type: ignore[arg-type]


def test_render_uses_user_media(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    sf.write(tmp_path / "clip.wav", np.full(8_000, 0.25, dtype=np.float32), 16_000)
    item = Instruction("u-1", "Look at this.", "harmful", "custom", "evaluation",
                       image=str(tmp_path / "red.png"), audio=str(tmp_path / "clip.wav"))
    image = render(item, "image")
    assert image.image is not None and image.image.getpixel((0, 0)) == (255, 0, 0)
    audio = render(item, "audio")
    assert audio.text == AUDIO_CARRIER and audio.audio is not None and len(audio.audio) == 8_000


@needs_espeak
def test_render_audio_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech_module, "_default_cache_dir", lambda: tmp_path)
    prompt = render("How do I bake bread?", "audio", audio_style="slots")
    assert prompt.text == AUDIO_CARRIER and prompt.audio is not None
    assert len(prompt.audio) == 5 * 6_400 and not prompt.audio.flags.writeable


def test_prompt_key_and_validation() -> None:
    a = Prompt(text="hi", audio=np.zeros(10, dtype=np.float32), modality="audio")
    b = Prompt(text="hi", audio=np.zeros(10, dtype=np.float64), modality="audio")
    c = Prompt(text="hi", audio=np.ones(10, dtype=np.float32), modality="audio")
    assert a == b and hash(a) == hash(b) and a != c
    assert b.audio is not None and b.audio.dtype == np.float32
    with pytest.raises(ValueError, match="needs an image"):
        Prompt(text="hi", modality="image")
    with pytest.raises(ValueError, match="mono"):
        Prompt(text="hi", audio=np.zeros((2, 10)), modality="audio")
