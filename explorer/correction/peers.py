"""The peers' corrections as their papers define them, per sample: ShiftDC and CMRM's sample level.

Why a module of its own: these corrections need more than the profile. Each media input gets its own vectors,
from extra forward passes of the input and of its *counterpart* (docs/method.md, formulas 12–14), while ReGap's
modes subtract one calibrated vector per layer. `explorer.correction.regap.plan_correction` calls `sample_vectors` and
applies the result with the same hooks as every other mode.

>>> vectors = sample_vectors(lm, prompts, profile, "shiftdc", shiftdc_layers(lm.num_layers))  # doctest: +SKIP
>>> vectors[16].shape                                                                          # doctest: +SKIP
torch.Size([4, 4096])
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from explorer.core.vocab import SAMPLE_RATE
from explorer.geometry.profile import Profile
from explorer.inputs.media import Prompt
from explorer.model.capture import CaptureSettings, capture_prompts
from explorer.model.models import LoadedModel

__all__ = [
    "SAMPLE_MODES",
    "blank_prompt",
    "blank_shifts",
    "counterpart_prompts",
    "dataset_blank_shift",
    "peer_layers",
    "sample_vectors",
    "shiftdc_layers",
]

#: Modes whose vectors are computed per input (extra passes), not read from the profile.
SAMPLE_MODES: tuple[str, ...] = ("shiftdc", "cmrm_sample")


def shiftdc_layers(num_layers: int) -> tuple[int, ...]:
    """The layers ShiftDC corrects: the second half of the decoder, L//2 … L−1 (its code's default; its one
    published run, LLaVA-1.5-7B, uses 10 … 31)."""
    return tuple(range(num_layers // 2, num_layers))


def peer_layers(mode: str, num_layers: int) -> tuple[int, ...]:
    """A peer mode's own default layers (empty for the modes that use the profile's calibrated layer)."""
    if mode == "shiftdc":
        return shiftdc_layers(num_layers)
    if mode in ("cmrm", "cmrm_sample"):
        return tuple(range(num_layers))
    return ()


#: How the counterpart names the medium it stands in for (ShiftDC's "<query> Image Caption: <caption>").
_DESCRIBED = {"image": "Image caption", "audio": "Audio transcript"}


def counterpart_prompts(model: LoadedModel, prompts: Sequence[Prompt]) -> list[Prompt]:
    """Each media prompt's text counterpart for ShiftDC: the prompt's own text (the carrier, or a benchmark's query)
    followed by the medium's content as text, "<text> Image caption: <request>". ShiftDC keeps the query and swaps
    the image for a caption, so the shift it removes is the medium's, not the text's; the explorer's caption is the
    request itself (it drew or spoke it, or the dataset gives it). Raises a clear error for media without a known
    request (an upload with no request text): the per-sample shift cannot be computed for it."""
    missing = [p for p in prompts if not p.request]
    if missing:
        raise ValueError(
            "ShiftDC compares each input with the same request as text, and this "
            f"{missing[0].modality} prompt carries no request text; give the request with the media "
            "(an item's instruction; in the app, draw or speak it from the typed request) or use another mode"
        )
    return [model.render(f"{p.text} {_DESCRIBED[p.modality]}: {p.request}", "text") for p in prompts]


def blank_prompt(model: LoadedModel, text: str, modality: str) -> Prompt:
    """`text` with CMRM's meaningless medium: a white image the size of the model's canvas, or 1 s of silence."""
    if modality == "image":
        layout = model.media.image_layout
        size = layout.size if layout is not None else (336, 336)
        return Prompt(text=text, image=Image.new("RGB", size, "white"), modality="image", request=text)
    if modality == "audio":
        return Prompt(text=text, audio=np.zeros(SAMPLE_RATE, dtype=np.float32), modality="audio", request=text)
    raise ValueError(f"CMRM calibrates image or audio input, not {modality!r}")


def blank_shifts(
    model: LoadedModel, texts: Sequence[str], modality: str, settings: CaptureSettings = CaptureSettings()
) -> torch.Tensor:
    """CMRM's shift per text (formula 13): `h_l(x, blank) − h_l(x)` at the last prompt token, [n, L, d] float64:
    what attaching a meaningless medium to the same text does to the states."""
    last = replace(settings, pooling="last")
    with_blank = capture_prompts(model, [blank_prompt(model, t, modality) for t in texts], last).double()
    alone = capture_prompts(model, [model.render(t, "text") for t in texts], last).double()
    return with_blank - alone


def dataset_blank_shift(
    model: LoadedModel, texts: Sequence[str], modality: str, settings: CaptureSettings = CaptureSettings()
) -> torch.Tensor:
    """CMRM's dataset-level vector [L, d]: the mean of `blank_shifts` over the calibration prompts' texts (each
    distinct text computed once, weighted by how many prompts carry it)."""
    counts = Counter(texts)
    distinct = list(counts)
    shifts = blank_shifts(model, distinct, modality, settings)
    weights = torch.tensor([counts[t] for t in distinct], dtype=torch.float64)
    return ((weights[:, None, None] * shifts).sum(0) / weights.sum()).float()


def sample_vectors(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    profile: Profile,
    mode: str,
    layers: Sequence[int],
    settings: CaptureSettings = CaptureSettings(),
) -> dict[int, torch.Tensor]:
    """Per-row vectors `v_l(x)` ([rows, d] per layer, float32) to subtract for each prompt, from uncorrected passes.

    shiftdc (formula 12): `m_l(x) = h_l(x) − h_l(t(x))`, the input's last-prompt-token state minus its text
    counterpart's, projected on the text refusal direction: `v_l = ⟨m_l, r̂_l⟩ r̂_l`. All layers' shifts come from
    the same two unsteered passes, as in the peer's code, then all are removed together.
    cmrm_sample (formula 14): `v_l(x) = h_l(x_text, blank) − h_l(x_text)` for the prompt's own text `x_text`: CMRM's
    shift of attaching a meaningless medium, measured on this input's text (it does not read the input's medium).
    """
    if mode not in SAMPLE_MODES:
        raise ValueError(f"sample_vectors computes {', '.join(SAMPLE_MODES)}; got {mode!r}")
    if mode == "cmrm_sample":
        shift = blank_shifts(model, [p.text for p in prompts], prompts[0].modality, settings)
        return {layer: shift[:, layer].float() for layer in layers}
    last = replace(settings, pooling="last")  # the peer reads (and corrects) the last prompt token
    media = capture_prompts(model, prompts, last).double()
    text = capture_prompts(model, counterpart_prompts(model, prompts), last).double()
    shift = media - text  # [rows, L, d]
    unit = profile.unit_dirs.double()
    return {layer: ((shift[:, layer] @ unit[layer])[:, None] * unit[layer]).float() for layer in layers}
