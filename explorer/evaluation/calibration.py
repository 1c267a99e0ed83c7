"""Calibrate: capture the calibration set in every modality and build the model's safety-geometry profile.

States come from the disk cache when present (see `explorer.model.capture`), so calibrating the same model on the same
set twice costs a few file reads; the profile itself is also saved, for export and for the web app.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import torch

from explorer.core.distributed import SINGLE, Ranks, gather_rows
from explorer.core.storage import (
    CacheDir,
    cache_bound,
    mark_used,
    prune_cache,
    resolve_cache_dir,
)
from explorer.core.vocab import LABELS, MEDIA_MODALITIES, Modality
from explorer.correction.peers import dataset_blank_shift
from explorer.correction.regap import CorrectionConfig, capture_corrected, self_rectification_scores
from explorer.geometry.formulas import auroc_per_layer
from explorer.geometry.profile import Profile, build_profile
from explorer.inputs.data import (
    VALIDATION_PATH,
    Instruction,
    calibration_hash,
    load_builtin,
    load_prompts,
)
from explorer.inputs.speech import speech_unavailable_reason
from explorer.model.capture import (
    CaptureSettings,
    capture_items,
    read_states,
    save_states,
    states_cache_file,
    states_cache_folder,
)
from explorer.model.models import LoadedModel
from explorer.model.states import StateBatch

__all__ = [
    "Calibration", "ThresholdChoice", "calibrate", "choose_threshold", "corrected_calibration",
    "load_calibration_items", "unrenderable_modalities",
]

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    """A profile and the calibration states it was built from (the plots need both)."""

    profile: Profile
    states: StateBatch
    items: list[Instruction]


def calibration_source_for(source: str, model: LoadedModel) -> str:
    """`default` → the model's own calibration source (its manifest's `calibration`, else `builtin`)."""
    return model.calibration_source if source == "default" else source


def load_calibration_items(source: str = "builtin", limit: int | None = None) -> list[Instruction]:
    """`builtin` → the shipped calibration split; `validation` → the shipped validation file; else a JSONL/CSV
    file of the user's (all its rows).

    `limit` keeps the first `limit` items of each label, so a small run stays balanced.
    """
    if source == "builtin":
        items = load_builtin("calibration")
    else:
        items = load_prompts(VALIDATION_PATH if source == "validation" else source)
    if limit is not None:
        kept: list[Instruction] = []
        for label in LABELS:
            kept += [item for item in items if item.label == label][:limit]
        items = kept
    labels = {item.label for item in items}
    if labels != set(LABELS):
        raise ValueError(f"calibration needs harmful and harmless items; {source} has only {sorted(labels)}")
    return items


def unrenderable_modalities(items: Sequence[Instruction], modalities: Sequence[Modality]) -> dict[str, str]:
    """{modality: why} for those of `modalities` that `items` cannot be rendered in on this machine: audio when an
    item has no clip of its own and no speech engine runs here (`explorer.inputs.speech_engine`)."""
    reason = speech_unavailable_reason() if "audio" in modalities and any(i.audio is None for i in items) else None
    return {"audio": reason} if reason else {}


def calibrate(
    model: LoadedModel,
    items: Sequence[Instruction],
    modalities: Sequence[Modality] | None = None,
    settings: CaptureSettings = CaptureSettings(),
    cache_dir: CacheDir = "default",
    progress: bool = False,
    ranks: Ranks = SINGLE,
) -> Calibration:
    """Capture `items` as text and in each other modality the model accepts, and build the profile.

    `modalities` None means every modality the model accepts that can be rendered here: without a speech engine
    the audio is left out (logged; `ModelSession.describe` says so). Named explicitly, a modality that cannot be
    rendered raises ValueError up front, with the command that fixes it.

    In a data-parallel run each rank captures its shard of the items and the states are all-gathered back into
    item order, so every rank builds the very profile one process would (same states, same order)."""
    wanted = list(modalities) if modalities else list(model.modalities)
    for modality, reason in unrenderable_modalities(items, wanted).items():
        if modalities:
            others = ",".join(m for m in wanted if m != modality) or "text"
            raise ValueError(f"cannot calibrate on {modality}: {reason}; or leave it out: --modalities {others}")
        logger.warning("calibrating %s without %s: %s", model.name, modality, reason)
        wanted.remove(modality)
    if "text" not in wanted:
        wanted.insert(0, "text")  # the refusal direction is learned from text
    batch: StateBatch | None = None
    for modality in wanted:
        part = capture_items(model, ranks.shard(items), modality, settings, cache_dir, progress and ranks.is_main)
        part = StateBatch(gather_rows(ranks, part.states, len(items)), [i.id for i in items],
                          [i.label for i in items], [modality] * len(items), [i.instruction for i in items])
        batch = part if batch is None else batch.concat(part)
    assert batch is not None
    profile = build_profile(
        batch,
        model_id=model.name,
        calibration_hash=calibration_hash(items),
        capture_settings={**asdict(settings), "revision": model.revision},
    )
    for modality in wanted:
        if modality != "text":  # CMRM's dataset level: the blank-medium shift over the prompts' own texts
            texts = [model.render(item, modality).text for item in items]
            profile.blank_shifts[modality] = dataset_blank_shift(model, texts, modality, settings)
    folder = resolve_cache_dir(cache_dir)
    if folder is not None and ranks.is_main:
        name = f"{model.revision}-{str(model.dtype).removeprefix('torch.')}-{model.device.type}"
        profile.save(folder / "profiles" / f"{name}-{profile.calibration_hash[:12]}-{settings.pooling}")
    return Calibration(profile=profile, states=batch, items=list(items))


def corrected_calibration(
    model: LoadedModel,
    calibration: Calibration,
    config: CorrectionConfig,
    settings: CaptureSettings = CaptureSettings(),
    cache_dir: CacheDir = "default",
) -> StateBatch | None:
    """The image/audio calibration states re-captured with `config` on, each item at the α `generate` gives it.

    Why cached on disk: the app's first "Analyse" of a setting needs these (two passes over every media item);
    keyed by the weights, the numerics, the calibration set, the capture settings and the whole correction, so
    a second start with the same setting reads them instead. The folder is bounded in bytes, least recently used
    first (`storage.cache_bound("corrected")`, 512 MiB unless $SGE_CORRECTED_CACHE_BYTES says otherwise), since
    every distinct strength the page asks for writes one file per media modality. `None` for mode "off" or a
    text-only profile.
    """
    if config.mode == "off":
        return None
    folder = resolve_cache_dir(cache_dir)
    items, profile = calibration.items, calibration.profile
    batch: StateBatch | None = None
    for modality in (m for m in profile.modalities if m in MEDIA_MODALITIES):
        path = states_cache_file(folder, "corrected", model, profile.calibration_hash, settings.cache_key(), modality,
                                 repr(sorted(asdict(config).items()))) if folder else None
        states = read_states(path, (len(items), model.num_layers, model.hidden_size)) if path else None
        if states is not None and path is not None:
            mark_used(path)  # the cache is LRU: a hit keeps this setting longer
        if states is None:
            prompts = [model.render(item, modality) for item in items]
            states = capture_corrected(model, prompts, profile, config, settings).states
            if path is not None and folder is not None:
                save_states(path, states, {"model": model.name, "modality": modality})
                # bounded (storage.CACHE_BOUNDS): evicts least recently used corrected captures only, never the
                # uncorrected states of any model (a folder of their own) nor the file just written
                prune_cache(states_cache_folder(folder, "corrected"), cache_bound("corrected"), keep=[path],
                            pattern="*.safetensors")
        part = StateBatch(states, [i.id for i in items], [i.label for i in items], [modality] * len(items),
                          [i.instruction for i in items])
        batch = part if batch is None else batch.concat(part)
    return batch


@dataclass
class ThresholdChoice:
    """The sigmoid gate's τ per media modality, chosen on the calibration split (`--threshold auto`).

    Why: τ = 0.5 is halfway between where harmless and harmful *text* sit on the normalised axis (0 and 1 by
    construction), but the gate reads media inputs after the probe correction, and where those sit is the model's
    own: on the next demo's collapse 3, harmful images sat at a median s(x) of 0.43 and harmless ones at 0.01, so
    τ 0.5 gated most harmful images shut (docs/demo-build.md). τ^m is the same rule measured on the inputs the gate
    sees: halfway between the mean s(x) of the modality's harmful and harmless calibration inputs."""

    per_modality: dict[str, float]  # "image" -> τ for image prompts
    mean_scores: dict[str, float]  # "image/harmful" -> mean s(x) of the calibration split's harmful images
    counts: dict[str, int]  # "image/harmful" -> inputs scored
    #: "image" -> AUROC of s(x), harmful positive, over the same scores: how well any τ could gate this modality
    #: (1: every harmful input scores above every harmless one). Where it is low no gate shape helps: the harmless
    #: look-alikes of the next demo's collapse 6 that scored above τ were refused at any temperature tried.
    separation: dict[str, float] = field(default_factory=dict)

    def apply(self, config: CorrectionConfig) -> CorrectionConfig:
        """`config` with these τ values per modality (its plain `threshold` stays the fallback)."""
        return replace(config, modality_thresholds=tuple(sorted(self.per_modality.items())))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(
    model: LoadedModel,
    items: Sequence[Instruction],
    profile: Profile,
    config: CorrectionConfig,
    modalities: Sequence[Modality],
    batch_size: int = 8,
    ranks: Ranks = SINGLE,
) -> ThresholdChoice:
    """τ per media modality: the midpoint of the mean self-rectification scores (formula 10's probe, at `config`'s
    layers and probe strength) of the calibration split's harmful and harmless inputs of that modality. Probe
    passes only (they stop at the probe layer), no generation. In a data-parallel run each rank scores its shard
    and the scores are gathered, so every rank computes the same means."""
    media = [m for m in modalities if m in MEDIA_MODALITIES]
    if not media:
        raise ValueError("choosing a threshold needs at least one image/audio modality")
    settings = CaptureSettings(batch_size=batch_size)
    per_modality, means, counts, separation = {}, {}, {}, {}
    for modality in media:
        gathered = {}
        for label in LABELS:
            labelled = [i for i in items if i.label == label]
            if not labelled:
                raise ValueError(f"no {label} calibration items to choose a threshold on")
            shard = ranks.shard(labelled)
            scores = self_rectification_scores(model, [model.render(i, modality) for i in shard], profile, config,
                                               settings) if shard else []
            every = gather_rows(ranks, torch.tensor(scores, dtype=torch.float64), len(labelled))
            means[f"{modality}/{label}"] = float(every.mean())
            counts[f"{modality}/{label}"] = len(labelled)
            gathered[label] = every
        per_modality[modality] = (means[f"{modality}/harmful"] + means[f"{modality}/harmless"]) / 2
        # formula 4's AUROC (harmful positive) over the scores as one "layer"
        separation[modality] = auroc_per_layer(torch.cat(list(gathered.values()))[:, None],
                                               [label for label, scores in gathered.items() for _ in scores])[0]
    return ThresholdChoice(per_modality=per_modality, mean_scores=means, counts=counts, separation=separation)
