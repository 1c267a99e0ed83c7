"""Calibrate: capture the calibration set in every modality and build the model's safety-geometry profile.

States come from the disk cache when present (see `explorer.capture`), so calibrating the same model on the same
set twice costs a few file reads; the profile itself is also saved, for export and for the web app.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .capture import CACHE_DIR, CaptureSettings, capture_items
from .data import Instruction, Modality, calibration_hash, load_builtin, load_prompts
from .geometry import Profile, StateBatch, build_profile
from .models import LoadedModel

__all__ = ["Calibration", "calibrate", "load_calibration_items"]


@dataclass
class Calibration:
    """A profile and the calibration states it was built from (the plots need both)."""

    profile: Profile
    states: StateBatch
    items: list[Instruction]


def load_calibration_items(source: str = "builtin", limit: int | None = None) -> list[Instruction]:
    """`builtin` → the shipped calibration split; else a JSONL/CSV file of the user's (all its rows).

    `limit` keeps the first `limit` items of each label, so a small run stays balanced.
    """
    items = load_builtin("calibration") if source == "builtin" else load_prompts(source)
    if limit is not None:
        kept: list[Instruction] = []
        for label in ("harmful", "harmless"):
            kept += [item for item in items if item.label == label][:limit]
        items = kept
    labels = {item.label for item in items}
    if labels != {"harmful", "harmless"}:
        raise ValueError(f"calibration needs harmful and harmless items; {source} has only {sorted(labels)}")
    return items


def calibrate(
    model: LoadedModel,
    items: Sequence[Instruction],
    modalities: Sequence[Modality] | None = None,
    settings: CaptureSettings = CaptureSettings(),
    cache_dir: Path | None = CACHE_DIR,
    progress: bool = False,
) -> Calibration:
    """Capture `items` as text and in each other modality the model accepts, and build the profile."""
    wanted = list(modalities) if modalities else list(model.modalities)
    if "text" not in wanted:
        wanted.insert(0, "text")  # the refusal direction is learned from text
    batch: StateBatch | None = None
    for modality in wanted:
        part = capture_items(model, items, modality, settings, cache_dir, progress)
        batch = part if batch is None else batch.concat(part)
    assert batch is not None
    profile = build_profile(
        batch,
        model_id=model.name,
        calibration_hash=calibration_hash(items),
        capture_settings={**asdict(settings), "revision": model.revision},
    )
    if cache_dir is not None:
        profile.save(cache_dir / "profiles" / f"{model.revision}-{profile.calibration_hash[:12]}-{settings.pooling}")
    return Calibration(profile=profile, states=batch, items=list(items))
