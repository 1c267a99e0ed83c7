"""A composite model folder's manifest (`manifest.json`): which sub-folder serves each modality, and how to draw
media for it. Read and checked here; explorer.model.loading loads the folder it describes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explorer.core.vocab import MODALITIES, Modality, check_choice
from explorer.inputs.media import AUDIO_STYLES, GridLayout, ImageLayout
from explorer.inputs.typography import TextLayout
from explorer.model.models import MediaStyle, ModelLoadError

__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "Manifest", "image_layout_of"]


MANIFEST_FILE = "manifest.json"


MANIFEST_FORMAT = "explorer-model/1"


@dataclass(frozen=True)
class Manifest:
    """A composite model folder: one sub-folder per modality's backend, and how to draw media for it.

    Why: a model assembled from parts (the built-in demo: an image model and an audio model trained around one
    language model) is described by data in its folder, so one loader serves it and every other model, and
    nothing downstream asks "is this the demo?". Fields of manifest.json: `format`, `backends` (modality →
    sub-folder), `shared_language_model` (the backends run one LM, checked equal and then shared in memory so
    one set of hooks serves all), `media` (`image_layout`: a word grid's or a text layout's fields, `audio_style`,
    `slot_seconds`), and optional `notice` (Markdown shown with the model), `card` (its model card, relative
    path), `strengths_from` (a JSON with the α_max per modality chosen on calibration for these exact weights)
    and `calibration` (where `--calibration default` calibrates: "builtin", or "validation" for a model trained on
    the calibration split).
    """

    folder: Path
    backends: dict[Modality, str]
    shared_language_model: bool
    media: MediaStyle
    notice: str = ""
    card: str | None = None
    strengths_from: str | None = None
    vocabulary: str | None = None
    gallery: str | None = None
    calibration: str = "builtin"

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            backends = {m: str(raw["backends"][m]) for m in MODALITIES if m in raw["backends"]}
            if "text" not in backends:
                raise ValueError("backends needs a 'text' entry")
            media = raw.get("media", {})
            style = MediaStyle(
                image_layout=image_layout_of(media["image_layout"]) if "image_layout" in media else None,
                audio_style=media.get("audio_style", "sentence"),
                slot_seconds=float(media.get("slot_seconds", 0.4)),
            )
            check_choice("media.audio_style", style.audio_style, AUDIO_STYLES)
            if not style.slot_seconds > 0:
                raise ValueError(f"media.slot_seconds must be > 0, got {style.slot_seconds}")
            files = ("card", "strengths_from", "vocabulary", "gallery")
            for field_name, name in [*(("backends", b) for b in backends.values()), *((f, raw.get(f)) for f in files)]:
                if name is not None and not (folder / name).resolve().is_relative_to(folder.resolve()):
                    raise ValueError(f"{field_name} {name!r} points outside the model folder")
            calibration = str(raw.get("calibration", "builtin"))
            check_choice("calibration", calibration, ("builtin", "validation"))
            return cls(folder, backends, bool(raw.get("shared_language_model", False)), style,
                       str(raw.get("notice", "")), *(raw.get(f) for f in files), calibration=calibration)
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{path} is not a valid model manifest: {type(err).__name__}: {err}") from err

    def distinct_folders(self) -> list[Path]:
        """Backend folders in modality order, each once (the text backend's first)."""
        return [self.folder / name for name in dict.fromkeys(self.backends.values())]


def image_layout_of(raw: dict[str, Any]) -> ImageLayout:
    """A manifest's `media.image_layout`: a word grid when it has `cols` (the first demo's), else wrapped lines."""
    return GridLayout(**raw) if "cols" in raw else TextLayout(**raw)
