"""The project's one vocabulary: modalities, labels, correction modes, layer indices and layer windows.

Why one module: these words are spelled by the data files, the CLI, the app, the profile and the report; when
each module kept its own tuple they drifted apart (five spellings of the mode list, two `layer_index` with
different errors). Everything that validates one of them calls `check_choice` here, so every bad value gets the
same message: the name, the value, and the allowed ones.

>>> check_choice("modality", "video", MODALITIES)
Traceback (most recent call last):
...
ValueError: modality must be one of 'text', 'image', 'audio'; got 'video'
>>> parse_layer_window("2-3", num_layers=6)
(2, 3)
>>> normalise_layer(-1, num_layers=6)
5
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "LABELS",
    "Label",
    "MODALITIES",
    "MEDIA_MODALITIES",
    "MODES",
    "Modality",
    "Mode",
    "SAMPLE_RATE",
    "check_choice",
    "normalise_layer",
    "parse_layer_window",
]

Modality = Literal["text", "image", "audio"]
Label = Literal["harmful", "harmless"]
#: Correction modes (formulas 7–14 of docs/method.md): none; fixed drift; its refusal-axis component; ReGap; ReGap
#: gated on the raw score (its probe uncorrected: the ablation that shows what self-rectification adds); and the
#: peers as published: ShiftDC (per sample), CMRM at dataset level and at sample level.
Mode = Literal["off", "fixed", "fixed_axis", "adaptive", "adaptive_raw", "shiftdc", "cmrm", "cmrm_sample"]

MODALITIES: tuple[Modality, ...] = get_args(Modality)
MEDIA_MODALITIES: tuple[Modality, ...] = ("image", "audio")
LABELS: tuple[Label, ...] = get_args(Label)
MODES: tuple[Mode, ...] = get_args(Mode)

#: Audio sample rate of every clip the explorer renders, loads or hands to a processor (Hz).
SAMPLE_RATE = 16_000


def check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    """Raise `ValueError` naming `name`, the bad `value` and the allowed values, unless `value in allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def normalise_layer(layer: int, num_layers: int) -> int:
    """A layer index in 0..num_layers-1; negative indices count from the end (-1 = last layer)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"a layer index must be an integer, got {layer!r}")
    if not -num_layers <= layer < num_layers:
        raise ValueError(
            f"layer {layer} out of range for a model with {num_layers} layers "
            f"(use 0..{num_layers - 1}, or -1 for the last)"
        )
    return layer % num_layers


#: Longest corrected-layers text accepted: "123-456" has 7; anything much longer is not a window.
_MAX_WINDOW_CHARS = 16


def parse_layer_window(text: str | None, num_layers: int) -> tuple[int, ...]:
    """One user syntax for corrected layers: "" / "default" / "auto" → () (the calibrated default),
    "2" → (2,), "2-3" → (2, 3). Anything else (a list like "1,2", a reversed or out-of-range window) is
    rejected with a message that shows the accepted forms, instead of being silently reinterpreted.
    """
    text = (text or "").strip()
    if not text or text.lower() in ("default", "auto"):
        return ()
    hint = (
        f'corrected layers are one layer like "2" or a contiguous window like "2-3", within 0..{num_layers - 1} '
        '(empty = the calibrated default)'
    )
    if len(text) > _MAX_WINDOW_CHARS:  # "0-1000000000" must never become a billion-element range
        raise ValueError(f"{hint}; got {len(text)} characters")
    try:
        if "-" in text.lstrip("-"):
            first, last = (int(part) for part in text.split("-", 1))
        else:
            first = last = int(text)
    except ValueError as err:
        raise ValueError(f"{hint}; got {text!r}") from err
    # Bounds first, then the range: the window is built only once it is known to hold at most num_layers layers.
    if not 0 <= first <= last < num_layers:
        raise ValueError(f"{hint}; got {text!r}")
    return tuple(range(first, last + 1))
