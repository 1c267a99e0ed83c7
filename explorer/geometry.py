"""Safety geometry of captured states: refusal directions, metrics, profiles and 2-D embeddings.

Every function here implements one numbered formula of ``docs/method.md`` and cites it. Inputs are
per-layer states ``[n, L, d]`` (raw decoder-layer outputs at the last prompt token, see
``StateBatch``); means are accumulated in float64 and stored as float32.

>>> import torch
>>> u = torch.zeros(2, 4); u[:, 0] = 1.0
>>> states = torch.stack([3 * u, -u, 3 * u, -u])          # [n=4, L=2, d=4]
>>> batch = StateBatch(states, ["a", "b", "c", "d"], ["harmful", "harmless"] * 2, ["text"] * 4,
...                    ["i1", "i2", "i3", "i4"])
>>> refusal_directions(batch)[:, 0].tolist()
[4.0, 4.0]
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from .data import Label, Modality

__all__ = [
    "LABELS",
    "MODALITIES",
    "EmbedMethod",
    "Label",
    "Modality",
    "Profile",
    "StateBatch",
    "auroc_per_layer",
    "build_profile",
    "embed_2d",
    "modality_drift",
    "normalised_score",
    "project",
    "refusal_directions",
    "refusal_gap",
    "translation_ceiling",
    "unit_directions",
    "warm_up_umap",
]

EmbedMethod = Literal["umap", "pca"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)
LABELS: tuple[Label, ...] = get_args(Label)
_EMBED_METHODS: tuple[str, ...] = get_args(EmbedMethod)

PROFILE_FORMAT_VERSION = 1
_TENSORS_FILE = "profile.safetensors"
_JSON_FILE = "profile.json"
_UNIT_NORM_ATOL = 1e-3
_MIN_UMAP_POINTS = 4  # UMAP's spectral initialisation fails below 4 points; PCA is used instead.


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _group_key(modality: str, label: str) -> str:
    return f"{modality}/{label}"


# --------------------------------------------------------------------------------------------------
# StateBatch
# --------------------------------------------------------------------------------------------------


@dataclass
class StateBatch:
    """Captured states of ``n`` prompts with their parallel metadata (docs/contracts.md).

    Attributes:
        states: ``[n, L, d]`` floating tensor of raw decoder-layer outputs at the last prompt token.
        item_ids: instruction id of each row (the same id across modalities pairs the rows, formula 5).
        labels: ``"harmful"`` or ``"harmless"`` per row.
        modalities: ``"text"``, ``"image"`` or ``"audio"`` per row.
        instructions: the instruction text per row.

    A ``(item_id, modality)`` pair may occur only once, so pairing by id is unambiguous.
    """

    states: torch.Tensor
    item_ids: list[str]
    labels: list[Label]
    modalities: list[Modality]
    instructions: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.states, torch.Tensor):
            raise TypeError(f"states must be a torch.Tensor [n, L, d], got {type(self.states).__name__}")
        if self.states.ndim != 3:
            raise ValueError(f"states must have shape [n, L, d], got {tuple(self.states.shape)}")
        if not self.states.is_floating_point():
            raise ValueError(f"states must be a floating tensor (float32), got {self.states.dtype}")
        n = self.states.shape[0]
        self.item_ids = list(self.item_ids)
        self.labels = list(self.labels)
        self.modalities = list(self.modalities)
        self.instructions = list(self.instructions)
        for name in ("item_ids", "labels", "modalities", "instructions"):
            length = len(getattr(self, name))
            if length != n:
                raise ValueError(f"{name} has {length} entries but states has n={n} rows")
        for label in self.labels:
            _check_choice("label", label, LABELS)
        for modality in self.modalities:
            _check_choice("modality", modality, MODALITIES)
        seen: set[tuple[str, str]] = set()
        for item_id, modality in zip(self.item_ids, self.modalities):
            if (item_id, modality) in seen:
                raise ValueError(f"item id {item_id!r} occurs twice for modality {modality!r}")
            seen.add((item_id, modality))
        if n and not bool(torch.isfinite(self.states).all()):
            raise ValueError("states contain NaN or inf")

    def __len__(self) -> int:
        return int(self.states.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.states.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.states.shape[2])

    def _take(self, rows: list[int]) -> StateBatch:
        index = torch.tensor(rows, dtype=torch.long)
        return StateBatch(
            states=self.states.index_select(0, index),
            item_ids=[self.item_ids[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            modalities=[self.modalities[i] for i in rows],
            instructions=[self.instructions[i] for i in rows],
        )

    def select(self, modality: Modality | None = None, label: Label | None = None) -> StateBatch:
        """Rows of one modality and/or label (``None`` keeps all), in their original order."""
        if modality is not None:
            _check_choice("modality", modality, MODALITIES)
        if label is not None:
            _check_choice("label", label, LABELS)
        rows = [
            i
            for i, (m, y) in enumerate(zip(self.modalities, self.labels))
            if (modality is None or m == modality) and (label is None or y == label)
        ]
        return self._take(rows)

    def concat(self, other: StateBatch) -> StateBatch:
        """This batch followed by ``other`` (same number of layers and hidden size)."""
        if other.states.shape[1:] != self.states.shape[1:]:
            raise ValueError(
                f"cannot concat batches with [L, d] = {tuple(self.states.shape[1:])} "
                f"and {tuple(other.states.shape[1:])}"
            )
        return StateBatch(
            states=torch.cat([self.states, other.states.to(self.states.dtype)], dim=0),
            item_ids=self.item_ids + other.item_ids,
            labels=self.labels + other.labels,
            modalities=self.modalities + other.modalities,
            instructions=self.instructions + other.instructions,
        )


def _mean64(states: torch.Tensor) -> torch.Tensor:
    """Mean over rows, accumulated in float64 (``[n, L, d]`` → ``[L, d]``)."""
    if states.shape[0] == 0:
        raise ValueError("cannot take the mean of an empty group")
    return states.to(torch.float64).mean(dim=0)


def _group_mean64(batch: StateBatch, modality: Modality, label: Label | None = None) -> torch.Tensor:
    group = batch.select(modality=modality, label=label)
    if len(group) == 0:
        what = f"{modality}/{label}" if label else modality
        raise ValueError(f"the batch has no {what} items")
    return _mean64(group.states)


# --------------------------------------------------------------------------------------------------
# Formulas 1-6
# --------------------------------------------------------------------------------------------------


def _refusal_directions64(batch: StateBatch, modality: Modality = "text") -> torch.Tensor:
    return _group_mean64(batch, modality, "harmful") - _group_mean64(batch, modality, "harmless")


def refusal_directions(batch: StateBatch) -> torch.Tensor:
    """Unnormalised refusal directions ``r_l = μ_l(text, harmful) − μ_l(text, harmless)`` (formula 1).

    Only text items are used. Returns a float32 ``[L, d]`` tensor.

    Raises:
        ValueError: if the batch has no harmful or no harmless text items.
    """
    return _refusal_directions64(batch, "text").to(torch.float32)


def _unit_directions64(refusal_dirs: torch.Tensor) -> torch.Tensor:
    if refusal_dirs.ndim != 2:
        raise ValueError(f"refusal_dirs must have shape [L, d], got {tuple(refusal_dirs.shape)}")
    r = refusal_dirs.to(torch.float64)
    norms = r.norm(dim=-1, keepdim=True)
    zero = (norms.squeeze(-1) == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"the harmful and harmless text means coincide at layers {zero}: no refusal direction")
    return r / norms


def unit_directions(refusal_dirs: torch.Tensor) -> torch.Tensor:
    """``r̂_l = r_l / ||r_l||`` per layer (formula 1), float32 ``[L, d]``; raises if some ``r_l`` is zero."""
    return _unit_directions64(refusal_dirs).to(torch.float32)


def _project64(states: torch.Tensor, unit_dirs: torch.Tensor) -> torch.Tensor:
    if unit_dirs.ndim == 0 or tuple(states.shape[-unit_dirs.ndim :]) != tuple(unit_dirs.shape):
        raise ValueError(
            f"states {tuple(states.shape)} must end with the directions' shape {tuple(unit_dirs.shape)} "
            "(e.g. states [n, L, d] with unit_dirs [L, d])"
        )
    dirs = unit_dirs.to(torch.float64)
    norms = dirs.norm(dim=-1)
    if not bool(torch.allclose(norms, torch.ones_like(norms), atol=_UNIT_NORM_ATOL)):
        raise ValueError("unit_dirs must have unit norm per layer: pass unit_directions(r), not r")
    return (states.to(torch.float64) * dirs).sum(dim=-1)


def project(states: torch.Tensor, unit_dirs: torch.Tensor) -> torch.Tensor:
    """Projections ``p_l(x) = ⟨h_l(x), r̂_l⟩`` on the refusal axis (formula 2).

    Args:
        states: ``[n, L, d]`` (or any ``[..., L, d]``; ``[n, d]`` with ``unit_dirs`` of shape ``[d]``).
        unit_dirs: ``[L, d]`` unit refusal directions ``r̂`` (see ``unit_directions``).

    Returns:
        float32 tensor of ``states``' shape without the last dimension, e.g. ``[n, L]``.
    """
    return _project64(states, unit_dirs).to(torch.float32)


def _check_proj_labels(proj: torch.Tensor, labels: list[Label] | list[str]) -> tuple[torch.Tensor, np.ndarray]:
    if proj.ndim != 2:
        raise ValueError(f"proj must have shape [n, L], got {tuple(proj.shape)}")
    if len(labels) != proj.shape[0]:
        raise ValueError(f"{len(labels)} labels for {proj.shape[0]} projections")
    for label in labels:
        _check_choice("label", label, LABELS)
    harmful = np.array([y == "harmful" for y in labels], dtype=bool)
    if harmful.all() or not harmful.any():
        missing = "harmless" if harmful.all() else "harmful"
        raise ValueError(f"no {missing} items: both labels are needed")
    return proj.to(torch.float64), harmful


def refusal_gap(proj: torch.Tensor, labels: list[Label] | list[str]) -> list[float]:
    """Refusal gap ``g_l = mean p_l(harmful) − mean p_l(harmless)`` per layer (formula 3).

    Raises:
        ValueError: if one of the labels is missing.
    """
    p, harmful = _check_proj_labels(proj, labels)
    mask = torch.from_numpy(harmful)
    gap = p[mask].mean(dim=0) - p[~mask].mean(dim=0)
    return [float(g) for g in gap]


def auroc_per_layer(proj: torch.Tensor, labels: list[Label] | list[str]) -> list[float]:
    """Conditional refusal separability ``CRS_l = AUROC(p_l(x), y)``, harmful positive (formula 4).

    Raises:
        ValueError: if one of the labels is missing (the AUROC would be undefined).
    """
    p, harmful = _check_proj_labels(proj, labels)
    y = harmful.astype(np.int64)
    scores = p.numpy()
    return [float(roc_auc_score(y, scores[:, layer])) for layer in range(scores.shape[1])]


def translation_ceiling(
    proj: torch.Tensor, labels: list[Label] | list[str], max_false_positive: float
) -> list[float]:
    """Translation ceiling ``TC_l(b)`` per layer (formula 4b): the largest share of harmful items above a
    threshold on ``p_l`` while at most ``b`` of the harmless items are, i.e. the ROC's best true-positive rate
    at false-positive rate ≤ ``b``.

    Why: subtracting one vector from every state (fixed / shiftdc / cmrm at one layer) keeps the items'
    order on the axis, so if refusal is read off ``p_l`` this is the most such a correction can refuse within
    an over-refusal budget ``b``.
    """
    from sklearn.metrics import roc_curve

    if not 0.0 <= max_false_positive <= 1.0:
        raise ValueError(f"max_false_positive must be in [0, 1], got {max_false_positive!r}")
    p, harmful = _check_proj_labels(proj, labels)
    scores = p.numpy()
    ceilings = []
    for layer in range(scores.shape[1]):
        fpr, tpr, _ = roc_curve(harmful.astype(np.int64), scores[:, layer])
        ceilings.append(float(tpr[fpr <= max_false_positive + 1e-12].max()))
    return ceilings


def _modality_drift64(batch: StateBatch, modality: Modality) -> torch.Tensor:
    _check_choice("modality", modality, MODALITIES)
    if modality == "text":
        return torch.zeros(batch.num_layers, batch.hidden_size, dtype=torch.float64)
    text = batch.select(modality="text")
    other = batch.select(modality=modality)
    shared = set(text.item_ids) & set(other.item_ids)
    if not shared:
        raise ValueError(f"no item id occurs both as text and as {modality}: the drift needs paired items")
    text_rows = [i for i, item in enumerate(text.item_ids) if item in shared]
    other_rows = [i for i, item in enumerate(other.item_ids) if item in shared]
    return _mean64(other.states[other_rows]) - _mean64(text.states[text_rows])


def modality_drift(batch: StateBatch, modality: Modality) -> torch.Tensor:
    """Modality drift ``δ_l^m = μ_l(m) − μ_l(text)`` over the same instructions (formula 5).

    Both means run over the item ids present both as text and as ``modality`` (both labels pooled).
    ``δ^text`` is zero. Returns a float32 ``[L, d]`` tensor.

    Raises:
        ValueError: if no item id is shared between text and ``modality``.
    """
    return _modality_drift64(batch, modality).to(torch.float32)


def normalised_score(
    proj: torch.Tensor, text_harmless_mean: torch.Tensor, text_harmful_mean: torch.Tensor
) -> torch.Tensor:
    """Normalised refusal score ``s_l = (p_l − mean p_l(text, harmless)) / (mean p_l(text, harmful) −
    mean p_l(text, harmless))`` (formula 6): 0 at harmless text, 1 at harmful text.

    Args:
        proj: projections ``[n, L]`` (any ``[..., L]``).
        text_harmless_mean: ``[L]`` mean projection of harmless text items.
        text_harmful_mean: ``[L]`` mean projection of harmful text items.
    """
    lo = text_harmless_mean.to(torch.float64)
    hi = text_harmful_mean.to(torch.float64)
    if lo.ndim != 1 or lo.shape != hi.shape or proj.shape[-1:] != lo.shape:
        raise ValueError(
            f"proj {tuple(proj.shape)} must end with [L] and both means must be [L], got "
            f"{tuple(lo.shape)} and {tuple(hi.shape)}"
        )
    span = hi - lo
    if bool((span == 0).any()):
        raise ValueError("harmful and harmless text project to the same mean: the score is undefined")
    return ((proj.to(torch.float64) - lo) / span).to(torch.float32)


def _cos_per_layer(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine per layer of two ``[L, d]`` tensors; 0.0 where either vector is zero (keeps metrics NaN-free)."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na, nb = a64.norm(dim=-1), b64.norm(dim=-1)
    dot = (a64 * b64).sum(dim=-1)
    return [float(d / (x * y)) if x > 0 and y > 0 else 0.0 for d, x, y in zip(dot, na, nb)]


# --------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------

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

    def __post_init__(self) -> None:
        L, d = self.num_layers, self.hidden_size
        if L <= 0 or d <= 0:
            raise ValueError(f"num_layers and hidden_size must be positive, got {L} and {d}")
        for name, tensor, shape in self._tensors_with_shapes():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        for key in (_group_key("text", "harmful"), _group_key("text", "harmless")):
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
        out += [(f"proj_means/{k}", v, (L,)) for k, v in self.proj_means.items()]
        return out

    @property
    def unit_dirs(self) -> torch.Tensor:
        """``r̂_l`` ``[L, d]`` (formula 1)."""
        return unit_directions(self.refusal_dirs)

    @property
    def modalities(self) -> list[Modality]:
        """Modalities present in the profile, in the order text, image, audio."""
        present = {key.partition("/")[0] for key in self.means}
        return [m for m in MODALITIES if m in present]

    def layer_index(self, layer: int) -> int:
        """Normalises a layer index (negative counts from the end) and checks its range."""
        if not -self.num_layers <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a model with {self.num_layers} layers")
        return layer % self.num_layers

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """``p_l(x)`` for ``states`` ``[..., L, d]`` → ``[..., L]`` (formula 2)."""
        return project(states, self.unit_dirs)

    def score(self, states: torch.Tensor) -> torch.Tensor:
        """Normalised refusal score ``s_l(x)`` ``[..., L]`` from the text statistics (formula 6)."""
        return normalised_score(
            self.project(states), self.proj_means["text/harmless"], self.proj_means["text/harmful"]
        )

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
        save_file(
            tensors,
            str(directory / _TENSORS_FILE),
            metadata={
                "model_id": self.model_id,
                "calibration_hash": self.calibration_hash,
                "format_version": str(PROFILE_FORMAT_VERSION),
            },
        )
        (directory / _JSON_FILE).write_text(text, encoding="utf-8")
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
    r64 = _refusal_directions64(batch, "text")
    unit = _unit_directions64(r64)
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
            mean = _group_mean64(sub, modality, label)
            means[_group_key(modality, label)] = mean.to(torch.float32)
            proj_means[_group_key(modality, label)] = (mean * unit).sum(dim=-1).to(torch.float32)
        proj = _project64(sub.states, unit)
        metrics["auroc"][modality] = auroc_per_layer(proj, sub.labels)
        metrics["refusal_gap"][modality] = refusal_gap(proj, sub.labels)
        if modality == "text":
            continue
        gap = torch.tensor(metrics["refusal_gap"][modality], dtype=torch.float64)
        metrics["collapse_ratio"][modality] = [float(x) for x in gap / text_gap]
        drift = _modality_drift64(batch, modality)
        drifts[modality] = drift.to(torch.float32)
        metrics["drift_norm"][modality] = [float(x) for x in drift.norm(dim=-1)]
        metrics["cos_drift_refusal"][modality] = _cos_per_layer(drift, r64)
        r_within = _refusal_directions64(batch, modality)
        metrics["cos_refusal_within"][modality] = _cos_per_layer(r64, r_within)

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


# --------------------------------------------------------------------------------------------------
# 2-D embeddings
# --------------------------------------------------------------------------------------------------


def _pca_2d(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = x.shape
    out = np.zeros((n, 2), dtype=np.float64)
    k = min(2, n, d)
    if n < 2 or k == 0:
        return out
    out[:, :k] = PCA(n_components=k, svd_solver="full", random_state=seed).fit_transform(x)
    return out


def embed_2d(
    states: torch.Tensor | np.ndarray,
    method: EmbedMethod = "umap",
    seed: int = 0,
    n_neighbors: int = 15,
) -> np.ndarray:
    """2-D embedding of ``[n, d]`` states (one layer) for the scatter plots.

    Deterministic for a given ``seed``: UMAP runs with ``random_state=seed`` (which makes it
    single-threaded), PCA uses the exact SVD. ``n_neighbors`` is capped at ``n − 1``.

    Small inputs: ``n == 0`` gives an empty ``[0, 2]`` array, ``n == 1`` gives ``[[0, 0]]``; UMAP needs at
    least 4 points, so ``method="umap"`` with fewer points returns the PCA embedding. When ``d == 1`` the
    second column is zero.

    Returns:
        float64 array ``[n, 2]``.
    """
    _check_choice("method", method, _EMBED_METHODS)
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors}")
    x = states.detach().to("cpu", torch.float64).numpy() if isinstance(states, torch.Tensor) else np.asarray(
        states, dtype=np.float64
    )
    if x.ndim != 2:
        raise ValueError(f"states must have shape [n, d] (one layer), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("states contain NaN or inf")
    n = x.shape[0]
    if method == "pca" or n < _MIN_UMAP_POINTS:
        return _pca_2d(x, seed)
    import umap  # imported lazily: importing umap-learn takes seconds

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, n - 1),
        random_state=seed,
        n_jobs=1,  # random_state forces one thread; saying so avoids umap's warning
    )
    return np.asarray(reducer.fit_transform(x.astype(np.float32)), dtype=np.float64)


_warm_lock = threading.Lock()
_warmed = False


def warm_up_umap() -> None:
    """Runs UMAP once on tiny random data so numba compiles its kernels (idempotent, thread-safe)."""
    global _warmed
    with _warm_lock:
        if _warmed:
            return
        data = np.random.default_rng(0).normal(size=(24, 8))
        embed_2d(data, method="umap", seed=0, n_neighbors=5)
        _warmed = True
