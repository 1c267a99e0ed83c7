"""`Profile`: a model's safety geometry on one calibration set, computed once, saved, and reloaded.

Holds the refusal directions (formula 1), the group means and their projections (2, 6), the modality drifts
(5) and the per-layer metrics (3–5) of docs/method.md. Saved as safetensors (tensors, float32) plus JSON (the
rest), so a profile built on a GPU box opens on a laptop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from explorer.core.storage import atomic_path, write_atomic
from explorer.core.vocab import LABELS, MODALITIES, Modality, normalise_layer
from explorer.geometry.formulas import (
    auroc_per_layer,
    cos_per_layer,
    group_key,
    group_mean64,
    modality_drift64,
    normalised_score,
    project,
    project64,
    refusal_directions64,
    refusal_gap,
    unit_directions,
    unit_directions64,
)
from explorer.model.states import StateBatch

__all__ = ["PROFILE_FORMAT_VERSION", "Profile", "build_profile"]

PROFILE_FORMAT_VERSION = 1
_TENSORS_FILE = "profile.safetensors"
_JSON_FILE = "profile.json"
_METRIC_NAMES = ("auroc", "refusal_gap", "collapse_ratio", "drift_norm", "cos_drift_refusal", "cos_refusal_within")


@dataclass
class Profile:
    """The safety geometry of one model on one calibration set (docs/method.md, "A profile stores").

    Attributes:
        model_id: the model's id.
        num_layers: ``L``.
        hidden_size: ``d``.
        calibration_hash: hash of the calibration items.
        capture_settings: JSON-serialisable capture settings (pooling, template, ...).
        refusal_dirs: ``[L, d]`` unnormalised ``r_l`` (formula 1).
        means: ``μ_l(m, y)`` ``[L, d]`` keyed ``"text/harmful"``, ``"image/harmless"``, ...
        drifts: ``δ_l^m`` ``[L, d]`` (formula 5) keyed by non-text modality.
        blank_shifts: CMRM's dataset-level vector ``[L, d]`` per non-text modality (formula 13): the mean shift
            of attaching a meaningless medium to the calibration prompts' texts (`explorer.correction.peers`).
        proj_means: mean projection ``[L]`` on ``r̂_l`` per group, keyed like ``means`` (formula 2).
        metrics: ``metrics[name][modality]`` is a per-layer list: ``"auroc"`` (4) and ``"refusal_gap"`` (3)
            for every modality; ``"collapse_ratio"`` (3), ``"drift_norm"``, ``"cos_drift_refusal"`` and
            ``"cos_refusal_within"`` (5) for every non-text modality.
    """

    model_id: str
    num_layers: int
    hidden_size: int
    calibration_hash: str
    capture_settings: dict[str, Any]
    refusal_dirs: torch.Tensor
    means: dict[str, torch.Tensor]
    drifts: dict[str, torch.Tensor]
    proj_means: dict[str, torch.Tensor]
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    blank_shifts: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        L, d = self.num_layers, self.hidden_size
        if L <= 0 or d <= 0:
            raise ValueError(f"num_layers and hidden_size must be positive, got {L} and {d}")
        for name, tensor, shape in self._tensors_with_shapes():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        for key in (group_key("text", "harmful"), group_key("text", "harmless")):
            if key not in self.means or key not in self.proj_means:
                raise ValueError(f"profile lacks the {key!r} group (text of both labels is required)")
        for key in list(self.means) + list(self.proj_means):
            modality, _, label = key.partition("/")
            if modality not in MODALITIES or label not in LABELS:
                raise ValueError(f"bad group key {key!r}: expected 'modality/label', e.g. 'text/harmful'")
        for modality in self.drifts:
            if modality not in MODALITIES or modality == "text":
                raise ValueError(f"drifts are keyed by non-text modality, got {modality!r}")
        for name, per_modality in self.metrics.items():
            for modality, values in per_modality.items():
                if len(values) != L:
                    raise ValueError(f"metric {name}[{modality}] has {len(values)} values, expected {L}")

    def _tensors_with_shapes(self) -> list[tuple[str, torch.Tensor, tuple[int, ...]]]:
        L, d = self.num_layers, self.hidden_size
        out: list[tuple[str, torch.Tensor, tuple[int, ...]]] = [("refusal_dirs", self.refusal_dirs, (L, d))]
        out += [(f"means/{k}", v, (L, d)) for k, v in self.means.items()]
        out += [(f"drifts/{k}", v, (L, d)) for k, v in self.drifts.items()]
        out += [(f"blank_shifts/{k}", v, (L, d)) for k, v in self.blank_shifts.items()]
        out += [(f"proj_means/{k}", v, (L,)) for k, v in self.proj_means.items()]
        return out

    @property
    def unit_dirs(self) -> torch.Tensor:
        """``r̂_l`` ``[L, d]`` (formula 1)."""
        return unit_directions(self.refusal_dirs)

    @property
    def pooling(self) -> str:
        """How the calibration states were pooled ("last" or "template_mean"): every state read against this
        profile (the probe's s(x), evaluation states) is pooled the same way."""
        return str(self.capture_settings.get("pooling", "last"))

    @property
    def modalities(self) -> list[Modality]:
        """Modalities present in the profile, in the order text, image, audio."""
        present = {key.partition("/")[0] for key in self.means}
        return [m for m in MODALITIES if m in present]

    def layer_index(self, layer: int) -> int:
        """Normalises a layer index (negative counts from the end) and checks its range."""
        return normalise_layer(layer, self.num_layers)

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """``p_l(x)`` for ``states`` ``[..., L, d]`` → ``[..., L]`` (formula 2)."""
        return project(states, self.unit_dirs)

    def score(self, states: torch.Tensor) -> torch.Tensor:
        """Normalised refusal score ``s_l(x)`` ``[..., L]`` from the text statistics (formula 6)."""
        return self.score_of_projections(self.project(states))

    def score_of_projections(self, projections: torch.Tensor) -> torch.Tensor:
        """Formula 6 on projections already computed (``[..., L]``), so a caller holding them projects once."""
        return normalised_score(projections, self.proj_means["text/harmless"], self.proj_means["text/harmful"])

    def save(self, directory: str | Path) -> Path:
        """Writes ``profile.safetensors`` (all tensors, float32) and ``profile.json`` (the rest).

        Raises:
            ValueError: if a tensor has the wrong shape or contains NaN/inf, or a metric is not finite,
                or ``capture_settings`` is not JSON-serialisable.
        """
        directory = Path(directory)
        tensors: dict[str, torch.Tensor] = {}
        for name, tensor, shape in self._tensors_with_shapes():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} contains NaN or inf; refusing to save")
            tensors[name] = tensor.detach().to("cpu", torch.float32).contiguous()
        meta = {
            "format_version": PROFILE_FORMAT_VERSION,
            "model_id": self.model_id,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "calibration_hash": self.calibration_hash,
            "capture_settings": self.capture_settings,
            "metrics": self.metrics,
            "tensors": sorted(tensors),
        }
        try:
            text = json.dumps(meta, indent=1, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"profile metadata is not finite JSON (check metrics and capture_settings): {exc}"
            ) from exc
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / _TENSORS_FILE) as tmp:
            save_file(
                tensors,
                str(tmp),
                metadata={
                    "model_id": self.model_id,
                    "calibration_hash": self.calibration_hash,
                    "format_version": str(PROFILE_FORMAT_VERSION),
                },
            )
        write_atomic(directory / _JSON_FILE, text)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Profile:
        """Reads a profile written by ``save``.

        Raises:
            FileNotFoundError: if the directory or one of its two files is missing.
            ValueError: if the files disagree with each other or hold bad shapes/values.
        """
        directory = Path(directory)
        missing = [name for name in (_JSON_FILE, _TENSORS_FILE) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no complete profile in {directory}: missing {', '.join(missing)} "
                "(build one with build_profile(...) and save it with profile.save(directory))"
            )
        meta = json.loads((directory / _JSON_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != PROFILE_FORMAT_VERSION:
            raise ValueError(
                f"{directory / _JSON_FILE} has format_version {meta.get('format_version')!r}, "
                f"expected {PROFILE_FORMAT_VERSION}: rebuild the profile"
            )
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(directory / _TENSORS_FILE), framework="pt") as f:
            st_meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        for key in ("model_id", "calibration_hash"):
            if st_meta.get(key) != meta.get(key):
                raise ValueError(
                    f"{_TENSORS_FILE} and {_JSON_FILE} in {directory} disagree on {key}: "
                    f"{st_meta.get(key)!r} vs {meta.get(key)!r}"
                )
        if sorted(tensors) != sorted(meta.get("tensors", [])):
            raise ValueError(
                f"{_TENSORS_FILE} holds tensors {sorted(tensors)} but {_JSON_FILE} lists {meta.get('tensors')}"
            )
        for key, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{key} in {directory / _TENSORS_FILE} contains NaN or inf")
        if "refusal_dirs" not in tensors:
            raise ValueError(f"{directory / _TENSORS_FILE} lacks refusal_dirs")

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        return cls(
            model_id=meta["model_id"],
            num_layers=int(meta["num_layers"]),
            hidden_size=int(meta["hidden_size"]),
            calibration_hash=meta["calibration_hash"],
            capture_settings=dict(meta["capture_settings"]),
            refusal_dirs=tensors["refusal_dirs"],
            means=group("means/"),
            drifts=group("drifts/"),
            blank_shifts=group("blank_shifts/"),
            proj_means=group("proj_means/"),
            metrics={name: {m: [float(x) for x in v] for m, v in per.items()} for name, per in meta["metrics"].items()},
        )


def build_profile(
    batch: StateBatch, model_id: str, calibration_hash: str, capture_settings: dict[str, Any]
) -> Profile:
    """Computes a ``Profile`` (formulas 1-5 and the means of formula 6) from calibration states.

    ``batch`` needs harmful and harmless text items; every other modality present also needs both labels
    and must share item ids with the text items (for the drift, formula 5).
    """
    r64 = refusal_directions64(batch, "text")
    unit = unit_directions64(r64)
    text_gap = r64.norm(dim=-1)  # g^text = ||r_l|| (formula 3)
    present = [m for m in MODALITIES if m in set(batch.modalities)]

    means: dict[str, torch.Tensor] = {}
    proj_means: dict[str, torch.Tensor] = {}
    drifts: dict[str, torch.Tensor] = {}
    metrics: dict[str, dict[str, list[float]]] = {name: {} for name in _METRIC_NAMES}
    for modality in present:
        sub = batch.select(modality=modality)
        for label in LABELS:
            if label not in sub.labels:
                raise ValueError(f"the batch has {modality} items but none labelled {label!r}: both are needed")
            mean = group_mean64(sub, modality, label)
            means[group_key(modality, label)] = mean.to(torch.float32)
            proj_means[group_key(modality, label)] = (mean * unit).sum(dim=-1).to(torch.float32)
        proj = project64(sub.states, unit)
        metrics["auroc"][modality] = auroc_per_layer(proj, sub.labels)
        metrics["refusal_gap"][modality] = refusal_gap(proj, sub.labels)
        if modality == "text":
            continue
        gap = torch.tensor(metrics["refusal_gap"][modality], dtype=torch.float64)
        metrics["collapse_ratio"][modality] = [float(x) for x in gap / text_gap]
        drift = modality_drift64(batch, modality)
        drifts[modality] = drift.to(torch.float32)
        metrics["drift_norm"][modality] = [float(x) for x in drift.norm(dim=-1)]
        metrics["cos_drift_refusal"][modality] = cos_per_layer(drift, r64)
        r_within = refusal_directions64(batch, modality)
        metrics["cos_refusal_within"][modality] = cos_per_layer(r64, r_within)

    return Profile(
        model_id=model_id,
        num_layers=batch.num_layers,
        hidden_size=batch.hidden_size,
        calibration_hash=calibration_hash,
        capture_settings=dict(capture_settings),
        refusal_dirs=r64.to(torch.float32),
        means=means,
        drifts=drifts,
        proj_means=proj_means,
        metrics=metrics,
    )
