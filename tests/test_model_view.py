"""Every supported family can read the requests we draw: the real processor classes, with the public settings of
real checkpoints (tests/data/public_processors.json), turn a rendered 40-word request into pixels in which every
line is whole, inside the picture, and tall enough; long spoken requests fit the encoder's window or are refused."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from needs import needs_speech
from tiny_models import PUBLIC_PROCESSORS

from explorer.core.vocab import SAMPLE_RATE
from explorer.inputs.media import GridLayout, render_image
from explorer.inputs.speech import render_audio
from explorer.inputs.typography import fitted_lines, render_text_image
from explorer.model.model_view import (
    MIN_FONT_MODEL_PX,
    ink_lines,
    model_view_of,
    processed_views,
    text_layout_for,
)

#: A harmless 40-word request (the length the issue names); the 80-word one doubles it with a second sentence.
REQUEST_40 = (
    "Please explain step by step how a neighbourhood bakery could plan its weekly bread production, "
    "including how much flour to order, when the ovens should start each morning, and how to keep the "
    "leftover loaves fresh for the next day"
)
REQUEST_80 = REQUEST_40 + (
    " and then describe how the same bakery might set fair prices, train a new apprentice over the first month, "
    "keep its kitchen clean and safe, and talk with regular customers about which new recipes they would "
    "enjoy trying next season"
)
IMAGE_CHECKPOINTS = [name for name, entry in PUBLIC_PROCESSORS.items() if "kwargs" in entry]
AUDIO_CHECKPOINTS = [name for name, entry in PUBLIC_PROCESSORS.items() if "audio" in entry]
#: Smallest glyph band accepted, in model pixels: the capital height of the smallest font drawn (~0.73 em).
MIN_BAND_PX = int(0.7 * MIN_FONT_MODEL_PX)
EDGE_PX = 2
needs_espeak = needs_speech


def test_requests_have_the_lengths_the_issue_names():
    assert len(REQUEST_40.split()) == 40 and len(REQUEST_80.split()) == 80


def _processor(checkpoint: str):
    entry = PUBLIC_PROCESSORS[checkpoint]
    return getattr(transformers, entry["class"])(**entry["kwargs"])


def _assert_readable(view: np.ndarray, expected_lines: int, what: str) -> None:
    lines = ink_lines(view)
    height, width = view.shape
    assert len(lines) == expected_lines, f"{what}: {len(lines)} ink lines in the model's view, {expected_lines} drawn"
    for line in lines:
        assert line.height >= MIN_BAND_PX, f"{what}: a line is {line.height} model px tall (< {MIN_BAND_PX})"
        assert line.top >= EDGE_PX and line.bottom <= height - EDGE_PX, f"{what}: a line touches the top/bottom edge"
        assert line.left >= EDGE_PX and line.right <= width - EDGE_PX, f"{what}: a line touches the left/right edge"


@pytest.mark.parametrize("checkpoint", IMAGE_CHECKPOINTS)
@pytest.mark.parametrize("request_text", [REQUEST_40, REQUEST_80], ids=["40 words", "80 words"])
def test_rendered_request_is_whole_and_legible_in_what_the_model_sees(checkpoint, request_text):
    processor = _processor(checkpoint)
    layout = text_layout_for(processor)
    image = render_text_image(request_text, layout)
    _, drawn = fitted_lines(request_text, layout)
    views = processed_views(processor, image)
    _assert_readable(views["whole"], len(drawn), f"{checkpoint} whole view")
    # The font is sized for the coarsest whole view: that view is the one closest to the minimum.
    view = model_view_of(processor)
    assert views["whole"].shape == (view.view_side, view.view_side)


def test_tiling_families_also_get_tiles_of_the_same_canvas():
    """SmolVLM / Idefics3 at 1536 px: a 4×4 grid of 384 tiles plus the global view; LLaVA-NeXT: 2×2 + overview."""
    smol = processed_views(_processor("HuggingFaceTB/SmolVLM-Instruct"),
                           render_text_image(REQUEST_40, text_layout_for(_processor("HuggingFaceTB/SmolVLM-Instruct"))))
    assert len(smol) == 17 and all(v.shape == (384, 384) for v in smol.values())
    nxt = _processor("llava-hf/llava-v1.6-mistral-7b-hf")
    views = processed_views(nxt, render_text_image(REQUEST_40, text_layout_for(nxt)))
    assert len(views) == 5 and all(v.shape == (336, 336) for v in views.values())


def test_qwen_view_reassembles_to_the_rendered_pixels():
    """The flat, merge-ordered patches put back together are the picture itself (448 is a multiple of 28: no
    resize), so the reassembly in processed_views is exact, not merely plausible."""
    processor = _processor("Qwen/Qwen2-VL-2B-Instruct")
    image = render_text_image(REQUEST_40, text_layout_for(processor))
    assert image.size == (448, 448)
    whole = processed_views(processor, image)["whole"]
    np.testing.assert_allclose(whole, np.asarray(image.convert("L"), dtype=np.float64), atol=0.5)


def test_the_old_wide_canvas_loses_text_in_llava_1_5s_centre_crop():
    """Negative control: the 704×256 word grid the engine drew before is cropped to its middle columns by
    LLaVA-1.5, so the checks above would fail on it (ink runs into the crop's edges)."""
    processor = _processor("llava-hf/llava-1.5-7b-hf")
    old = render_image("Please explain how a bakery plans its weekly bread production and orders flour in time",
                       GridLayout(cols=4, rows=4, cell_width=168, cell_height=56, font_size=22, margin=16))
    assert old.size == (704, 256)
    lines = ink_lines(processed_views(processor, old)["whole"])
    assert any(line.left < EDGE_PX or line.right > 336 - EDGE_PX for line in lines)


def test_too_long_for_the_smallest_legible_font_is_refused_with_the_reason():
    layout = text_layout_for(_processor("llava-hf/llava-1.5-7b-hf"))
    with pytest.raises(ValueError, match=r"words\) needs \d+ lines .* holds \d+"):
        fitted_lines(" ".join([REQUEST_80] * 4), layout)


def _window(checkpoint: str) -> float:
    entry = PUBLIC_PROCESSORS[checkpoint]["audio"]
    extractor = getattr(transformers, entry["class"])(**entry["kwargs"])
    return extractor.n_samples / extractor.sampling_rate


@needs_espeak
@pytest.mark.parametrize("checkpoint", AUDIO_CHECKPOINTS)
def test_spoken_80_word_request_fits_the_public_audio_window(checkpoint):
    window = _window(checkpoint)
    assert window in (30.0, 300.0)
    audio = render_audio(REQUEST_80, "sentence", max_seconds=window)
    assert 5 * SAMPLE_RATE < audio.size <= window * SAMPLE_RATE


@needs_espeak
def test_spoken_request_too_long_for_the_window_is_refused_not_cut():
    with pytest.raises(ValueError, match="hears at most 30 s"):
        render_audio(" ".join([REQUEST_80] * 2), "sentence", max_seconds=_window("Qwen/Qwen2-Audio-7B-Instruct"))
    with pytest.raises(ValueError, match="hears at most 7 s"):
        render_audio(REQUEST_40, "slots", slot_seconds=0.4, max_seconds=7.0)
