"""What a model's image processor makes of a picture, and a canvas for requests that survives it.

Why: a typographic request is only a fair test of the model if the model can read it. Every family preprocesses
its own way: LLaVA-1.5 resizes the short side and centre-crops a square; LLaVA-NeXT adds any-resolution tiles to a
squashed overview; Qwen2-VL / 2.5-VL / 2.5-Omni resize to a multiple of 28 within [min, max] pixels; Gemma 3
squashes to 896×896; Idefics3 / SmolVLM split into tiles plus a squashed global view. A square canvas survives all
of them whole, so `text_layout_for` picks the square's side and the legible font sizes from the processor's own
settings; `processed_views` undoes the processor's normalisation and patching to give the pictures the model
actually receives, so a test (or a curious user) can check the text is in them, whole and big enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from explorer.inputs.typography import TextLayout

__all__ = ["MIN_FONT_MODEL_PX", "Inked", "ModelView", "ink_lines", "model_view_of", "processed_views", "text_layout_for"]

#: Smallest font size, in the pixels of the model's lowest-resolution whole view, that a request is drawn at.
#: At 12 px the DejaVu glyphs are ~9 px (capitals) to ~14 px (ascender to descender) tall: the size at which
#: typographic-attack papers report the models reading text reliably; smaller is refused, not drawn.
MIN_FONT_MODEL_PX = 12
#: Largest font size as a share of the view's side: short requests are drawn big, as in FigStep, not huge.
_MAX_FONT_SHARE = 1 / 10
#: The canvas side for processors that keep the image's own size (Qwen2-VL family): 448 px = 16×16 merged
#: patches (256 image tokens), enough for an 80-word request at a legible size.
_DYNAMIC_SIDE = 448
_MARGIN_SHARE = 1 / 40  # white kept around the text, as a share of the side


@dataclass(frozen=True)
class ModelView:
    """The square canvas to draw on (`side` px) and the side, in model pixels, of the coarsest view in which the
    model sees the whole canvas at once (fonts are sized for that view)."""

    side: int
    view_side: int
    family_rule: str  # which preprocessing rule applied, for messages and tests

    def layout(self) -> TextLayout:
        scale = self.side / self.view_side
        min_font = max(1, round(MIN_FONT_MODEL_PX * scale))
        max_font = max(min_font, round(self.view_side * _MAX_FONT_SHARE * scale))
        return TextLayout(width=self.side, height=self.side, font_size=max_font, min_font_size=min_font,
                          margin=max(2, round(self.side * _MARGIN_SHARE)))


def _get(processor: Any, name: str) -> Any:
    value = getattr(processor, name, None)
    if value is None:
        return None
    return value if not hasattr(value, "__dict__") else vars(value)


def _size(processor: Any) -> dict[str, Any]:
    size = _get(processor, "size") or {}
    return {k: v for k, v in dict(size).items() if v is not None}


def model_view_of(image_processor: Any) -> ModelView:
    """The canvas and view sizes for this image processor (public settings are read from the processor itself)."""
    name = type(image_processor).__name__
    size = _size(image_processor)
    if _get(image_processor, "image_grid_pinpoints"):  # LLaVA-NeXT: overview at the base size + tiles
        base = int(size.get("shortest_edge") or (_get(image_processor, "crop_size") or {}).get("height"))
        squares = [h for h, w in _get(image_processor, "image_grid_pinpoints") if h == w]
        return ModelView(side=max(squares or [base]), view_side=base, family_rule="any-res tiles + overview")
    if name.startswith("Qwen2VL") or _get(image_processor, "merge_size"):  # dynamic resolution
        factor = int(_get(image_processor, "patch_size") or 14) * int(_get(image_processor, "merge_size") or 2)
        max_pixels = int(size.get("longest_edge") or _get(image_processor, "max_pixels") or _DYNAMIC_SIDE**2)
        min_pixels = int(size.get("shortest_edge") or _get(image_processor, "min_pixels") or factor**2)
        side = min(_DYNAMIC_SIDE, int(max_pixels**0.5) // factor * factor)
        side = max(side, -(-int(min_pixels**0.5) // factor) * factor, factor)
        return ModelView(side=side, view_side=side, family_rule="dynamic resolution")
    if _get(image_processor, "max_image_size"):  # Idefics3 / SmolVLM: tiles of max_image_size + a global view
        tile = int(_get(image_processor, "max_image_size")["longest_edge"])
        longest = int(size.get("longest_edge", tile))
        splitting = bool(_get(image_processor, "do_image_splitting"))
        return ModelView(side=longest if splitting else tile, view_side=tile, family_rule="tiles + global view")
    if "height" in size and "width" in size:  # Gemma 3, SigLIP: squash to a fixed square
        side = int(min(size["height"], size["width"]))
        return ModelView(side=side, view_side=side, family_rule="squash to a fixed size")
    crop = _get(image_processor, "crop_size") or {}
    if _get(image_processor, "do_center_crop") and crop:  # CLIP (LLaVA-1.5): short side, then centre crop
        side = int(min(crop["height"], crop["width"]))
        return ModelView(side=side, view_side=side, family_rule="resize short side + centre crop")
    if "shortest_edge" in size:
        side = int(size["shortest_edge"])
        return ModelView(side=side, view_side=side, family_rule="resize short side")
    return ModelView(side=_DYNAMIC_SIDE, view_side=_DYNAMIC_SIDE, family_rule="unknown processor: a square")


def text_layout_for(image_processor: Any) -> TextLayout:
    """The `TextLayout` whose canvas this processor keeps whole and whose fonts it keeps legible."""
    return model_view_of(image_processor).layout()


# ------------------------------------------------------------------------------------------ processed pixels


def _unnormalise(pixels: np.ndarray, image_processor: Any) -> np.ndarray:
    """[C, H, W] model input → [H, W] grey levels 0–255 (the inverse of rescale + normalise)."""
    pixels = pixels.astype(np.float64)
    if getattr(image_processor, "do_normalize", True):
        mean = np.asarray(_get(image_processor, "image_mean") or (0.5, 0.5, 0.5), dtype=np.float64)[:, None, None]
        std = np.asarray(_get(image_processor, "image_std") or (0.5, 0.5, 0.5), dtype=np.float64)[:, None, None]
        pixels = pixels * std + mean
    if getattr(image_processor, "do_rescale", True):
        pixels = pixels / float(_get(image_processor, "rescale_factor") or 1 / 255)
    return np.clip(pixels.mean(axis=0), 0, 255)


def processed_views(image_processor: Any, image: Image.Image) -> dict[str, np.ndarray]:
    """The grey pictures the model receives for `image`, by name: "whole" is the coarsest view holding the whole
    image (the overview / global view, or the only one); "tile i" are the extra tiles of tiling families."""
    name = type(image_processor).__name__
    nested = name.startswith(("Idefics3", "SmolVLM", "Gemma3"))
    out = image_processor(images=[[image]] if nested else [image], return_tensors="np")
    pixels = np.asarray(out["pixel_values"])
    if "image_grid_thw" in out:  # Qwen2-VL family: flat patches in merge order → one picture
        t, gh, gw = (int(v) for v in np.asarray(out["image_grid_thw"])[0])
        patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
        temporal = int(image_processor.temporal_patch_size)
        grid = pixels[: t * gh * gw].reshape(t, gh // merge, gw // merge, merge, merge, 3, temporal, patch, patch)
        picture = grid[0, :, :, :, :, :, 0].transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * patch, gw * patch)
        return {"whole": _unnormalise(picture, image_processor)}
    if pixels.ndim == 4:  # one picture per image
        return {"whole": _unnormalise(pixels[0], image_processor)}
    pictures = pixels[0]
    if "pixel_attention_mask" in out:  # Idefics3 / SmolVLM: tiles first, global view last, padded
        masks = np.asarray(out["pixel_attention_mask"])[0]
        views = []
        for picture, mask in zip(pictures, masks):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if rows.size:
                views.append(_unnormalise(picture[:, : rows[-1] + 1, : cols[-1] + 1], image_processor))
        return {"whole": views[-1], **{f"tile {i}": v for i, v in enumerate(views[:-1])}}
    # LLaVA-NeXT: the overview first, then the tiles
    return {"whole": _unnormalise(pictures[0], image_processor),
            **{f"tile {i}": _unnormalise(p, image_processor) for i, p in enumerate(pictures[1:])}}


@dataclass(frozen=True)
class Inked:
    """A line of text found in a picture: its rows [top, bottom) and ink columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top


def ink_lines(grey: np.ndarray, threshold: float = 128.0) -> list[Inked]:
    """The text lines of a picture: runs of rows holding dark pixels, each with its ink's column extent.

    Why from pixels: it is what the model receives, so a line cut by a crop (ink up to the edge), lost entirely,
    or shrunk below a legible height shows up here whatever the processor did."""
    dark = grey < threshold
    inked_rows = dark.any(axis=1)
    lines: list[Inked] = []
    row = 0
    while row < len(inked_rows):
        if not inked_rows[row]:
            row += 1
            continue
        top = row
        while row < len(inked_rows) and inked_rows[row]:
            row += 1
        cols = np.flatnonzero(dark[top:row].any(axis=0))
        lines.append(Inked(top=top, bottom=row, left=int(cols[0]), right=int(cols[-1]) + 1))
    return lines
