"""Requests drawn as wrapped lines of text (FigStep style) on a canvas chosen for the model that will read them.

Why not the word grid: a real model's processor resizes, crops or tiles the image its own way, and a long request
does not fit 16 cells. A `TextLayout` says how big the canvas is and which font sizes keep the text legible *after*
that processing (`explorer.model.model_view.text_layout_for` derives it from the loaded processor); `render_text_image`
wraps any request into lines at the largest font that fits, and refuses (with the reason) a request so long that
even the smallest legible font would not hold it, rather than drawing text no model could read.

>>> layout = TextLayout(width=336, height=336, font_size=32, min_font_size=12, margin=8)
>>> image = render_text_image("How do I bake bread at home?", layout)
>>> image.size, fitted_lines("How do I bake bread at home?", layout)[1]
((336, 336), ['How do I bake', 'bread at home?'])
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FONT_PATH", "LINE_PITCH", "TextLayout", "fitted_lines", "load_font", "render_text_image"]

FONT_PATH = Path(__file__).resolve().parents[2] / "assets" / "fonts" / "DejaVuSansMono.ttf"

#: Line pitch in units of the font size. DejaVu's ascent + descent is 1.17 em, so 1.5 em leaves about a third of
#: an em of white between lines: enough for the lines to stay apart after a model's downscaling.
LINE_PITCH = 1.5


@lru_cache(maxsize=128)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    """The shipped monospace font at `size` px (loaded once per size)."""
    return ImageFont.truetype(str(FONT_PATH), size=size)


@dataclass(frozen=True)
class TextLayout:
    """A white `width` × `height` canvas with `margin` px kept free on each side; text at the largest font size in
    [`min_font_size`, `font_size`] that fits. Sizes are canvas pixels (the model's processor may rescale them)."""

    width: int
    height: int
    font_size: int
    min_font_size: int
    margin: int = 8

    def __post_init__(self) -> None:
        for name in ("width", "height", "font_size", "min_font_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TextLayout.{name} must be a positive int, got {value!r}")
        if self.min_font_size > self.font_size:
            raise ValueError(f"TextLayout.min_font_size ({self.min_font_size}) is above font_size ({self.font_size})")
        if not isinstance(self.margin, int) or self.margin < 0 or 2 * self.margin >= min(self.width, self.height):
            raise ValueError(f"TextLayout.margin must be an int in [0, half the canvas), got {self.margin!r}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the rendered image in pixels."""
        return (self.width, self.height)


def _wrap(text: str, size: int, width: int) -> list[str]:
    # The font is monospace, so a line of n characters is n advances wide; words longer than a line are broken.
    advance = load_font(size).getlength("M")
    columns = max(1, int(width // advance))
    return textwrap.wrap(text, width=columns, break_long_words=True, break_on_hyphens=False)


def fitted_lines(text: str, layout: TextLayout) -> tuple[int, list[str]]:
    """The largest font size that fits `text` in `layout`, and the wrapped lines at that size.

    Raises ValueError when even `min_font_size` does not fit: the request is too long to stay legible for this
    model, and the message says how long it is and what would fit.
    """
    words = " ".join(text.split())
    if not words:
        raise ValueError("the request has no text to render")
    inner_w, inner_h = layout.width - 2 * layout.margin, layout.height - 2 * layout.margin
    for size in range(layout.font_size, layout.min_font_size - 1, -1):
        lines = _wrap(words, size, inner_w)
        if _block_height(len(lines), size) <= inner_h:
            return size, lines
    lines = _wrap(words, layout.min_font_size, inner_w)
    capacity = int((inner_h - layout.min_font_size * 1.2) // (layout.min_font_size * LINE_PITCH)) + 1
    raise ValueError(
        f"the request ({len(words.split())} words) needs {len(lines)} lines at the smallest legible font "
        f"({layout.min_font_size} px) but this model's {layout.width}x{layout.height} image holds {capacity}; "
        "shorten it or split it into several items"
    )


def _block_height(lines: int, size: int) -> float:
    # The last line needs only its own glyph height (ascent + descent ≈ 1.2 em), not a full pitch.
    return (lines - 1) * size * LINE_PITCH + size * 1.2


def render_text_image(text: str, layout: TextLayout) -> Image.Image:
    """Draw `text` as left-aligned black lines on white, the block centred vertically; RGB with R = G = B.

    Deterministic: the shipped monospace font and fixed positions give byte-identical pixels for the same text.
    """
    size, lines = fitted_lines(text, layout)
    font = load_font(size)
    canvas = Image.new("L", layout.size, color=255)
    draw = ImageDraw.Draw(canvas)
    top = layout.margin + (layout.height - 2 * layout.margin - _block_height(len(lines), size)) / 2
    for index, line in enumerate(lines):
        # anchor "la": y is the ascender line, so every line's box starts exactly one pitch below the previous
        draw.text((layout.margin, top + index * size * LINE_PITCH), line, fill=0, font=font, anchor="la")
    return canvas.convert("RGB")
