"""Safety-geometry formulas on captured states: refusal directions, projections, separability, drift.

Every public function implements one numbered formula of ``docs/method.md`` and cites it. Inputs are
per-layer states ``[n, L, d]`` (raw decoder-layer outputs at the captured position, see ``StateBatch``);
means are accumulated in float64 (the ``…64`` functions) and returned as float32.

>>> import torch
>>> u = torch.zeros(2, 4); u[:, 0] = 1.0
>>> states = torch.stack([3 * u, -u, 3 * u, -u])          # [n=4, L=2, d=4]
>>> batch = StateBatch(states, ["a", "b", "c", "d"], ["harmful", "harmless"] * 2, ["text"] * 4,
...                    ["i1", "i2", "i3", "i4"])
>>> refusal_directions(batch)[:, 0].tolist()
[4.0, 4.0]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from explorer.core.vocab import LABELS, MODALITIES, Label, Modality, check_choice
from explorer.model.states import StateBatch

__all__ = [
    "accuracy_at_threshold",
    "auroc_per_layer",
    "axis_group_stats",
    "cos_per_layer",
    "group_key",
    "modality_drift",
    "normalised_score",
    "project",
    "refusal_directions",
    "refusal_gap",
    "translation_ceiling",
    "unit_directions",
]

_UNIT_NORM_ATOL = 1e-3


def group_key(modality: str, label: str) -> str:
    """The key of one (modality, label) group in profiles, plots and metrics: ``"image/harmful"``."""
    return f"{modality}/{label}"


#: Rows converted to float64 at a time: the float64 work copies stay a few MB whatever the number of items, so
#: building a profile adds no memory that grows with the calibration file (the states themselves aside).
_ROWS_PER_CHUNK = 256


def _mean64(states: torch.Tensor) -> torch.Tensor:
    """Mean over rows, accumulated in float64 a chunk of rows at a time (``[n, L, d]`` → ``[L, d]``)."""
    if states.shape[0] == 0:
        raise ValueError("cannot take the mean of an empty group")
    total = torch.zeros(states.shape[1:], dtype=torch.float64)
    for chunk in states.split(_ROWS_PER_CHUNK):
        total += chunk.to(torch.float64).sum(dim=0)
    return total / states.shape[0]


def group_mean64(batch: StateBatch, modality: Modality, label: Label | None = None) -> torch.Tensor:
    group = batch.select(modality=modality, label=label)
    if len(group) == 0:
        what = f"{modality}/{label}" if label else modality
        raise ValueError(f"the batch has no {what} items")
    return _mean64(group.states)


# --------------------------------------------------------------------------------------------------
# Formulas 1-6
# --------------------------------------------------------------------------------------------------


def refusal_directions64(batch: StateBatch, modality: Modality = "text") -> torch.Tensor:
    return group_mean64(batch, modality, "harmful") - group_mean64(batch, modality, "harmless")


def refusal_directions(batch: StateBatch) -> torch.Tensor:
    """Unnormalised refusal directions ``r_l = μ_l(text, harmful) − μ_l(text, harmless)`` (formula 1).

    Only text items are used. Returns a float32 ``[L, d]`` tensor.

    Raises:
        ValueError: if the batch has no harmful or no harmless text items.
    """
    return refusal_directions64(batch, "text").to(torch.float32)


def unit_directions64(refusal_dirs: torch.Tensor) -> torch.Tensor:
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
    return unit_directions64(refusal_dirs).to(torch.float32)


def project64(states: torch.Tensor, unit_dirs: torch.Tensor) -> torch.Tensor:
    if unit_dirs.ndim == 0 or tuple(states.shape[-unit_dirs.ndim :]) != tuple(unit_dirs.shape):
        raise ValueError(
            f"states {tuple(states.shape)} must end with the directions' shape {tuple(unit_dirs.shape)} "
            "(e.g. states [n, L, d] with unit_dirs [L, d])"
        )
    dirs = unit_dirs.to(torch.float64)
    norms = dirs.norm(dim=-1)
    if not bool(torch.allclose(norms, torch.ones_like(norms), atol=_UNIT_NORM_ATOL)):
        raise ValueError("unit_dirs must have unit norm per layer: pass unit_directions(r), not r")
    if states.ndim < 3 or states.shape[0] == 0:
        return (states.to(torch.float64) * dirs).sum(dim=-1)
    # a chunk of rows at a time: each row's sum is the same, the float64 copy stays small
    return torch.cat([(chunk.to(torch.float64) * dirs).sum(dim=-1) for chunk in states.split(_ROWS_PER_CHUNK)])


def project(states: torch.Tensor, unit_dirs: torch.Tensor) -> torch.Tensor:
    """Projections ``p_l(x) = ⟨h_l(x), r̂_l⟩`` on the refusal axis (formula 2).

    Args:
        states: ``[n, L, d]`` (or any ``[..., L, d]``; ``[n, d]`` with ``unit_dirs`` of shape ``[d]``).
        unit_dirs: ``[L, d]`` unit refusal directions ``r̂`` (see ``unit_directions``).

    Returns:
        float32 tensor of ``states``' shape without the last dimension, e.g. ``[n, L]``.
    """
    return project64(states, unit_dirs).to(torch.float32)


def _check_proj_labels(proj: torch.Tensor, labels: list[Label] | list[str]) -> tuple[torch.Tensor, np.ndarray]:
    if proj.ndim != 2:
        raise ValueError(f"proj must have shape [n, L], got {tuple(proj.shape)}")
    if len(labels) != proj.shape[0]:
        raise ValueError(f"{len(labels)} labels for {proj.shape[0]} projections")
    for label in labels:
        check_choice("label", label, LABELS)
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


def accuracy_at_threshold(scores: torch.Tensor, labels: list[Label] | list[str], threshold: float = 0.5) -> list[float]:
    """Accuracy per layer of "harmful iff score > threshold" (formula 4c), `scores` [n, L] normalised refusal
    scores (0 = harmless text mean, 1 = harmful text mean), so 0.5 is the threshold fixed on text calibration.

    Why beside AUROC: a modality drift moves every item along the axis; AUROC keeps the order and does not see
    it, this accuracy does."""
    s, harmful = _check_proj_labels(scores, labels)
    predicted = s.numpy() > threshold
    return [float(np.mean(predicted[:, layer] == harmful)) for layer in range(predicted.shape[1])]


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

    Why: subtracting one vector from every state (fixed / fixed_axis at one layer) keeps the items'
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


def modality_drift64(batch: StateBatch, modality: Modality) -> torch.Tensor:
    check_choice("modality", modality, MODALITIES)
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
    return modality_drift64(batch, modality).to(torch.float32)


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


def cos_per_layer(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine per layer of two ``[L, d]`` tensors; 0.0 where either vector is zero (keeps metrics NaN-free)."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na, nb = a64.norm(dim=-1), b64.norm(dim=-1)
    dot = (a64 * b64).sum(dim=-1)
    return [float(d / (x * y)) if x > 0 and y > 0 else 0.0 for d, x, y in zip(dot, na, nb)]


def axis_group_stats(scores: torch.Tensor, groups: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Mean and spread of the refusal-axis score per group and layer (the "Refusal axis" plot and report).

    `scores` is ``[n, L]`` (formula 6 per row), `groups` one name per row (a label, or ``"image/harmful"``).
    The spread is the population standard deviation (divide by n): it describes the group as plotted, and a
    one-item group has spread 0 rather than NaN. Groups come out in the order they first appear.

    >>> axis_group_stats(torch.tensor([[0.0], [2.0], [5.0]]), ["a", "a", "b"])
    {'a': {'mean': [1.0], 'std': [1.0]}, 'b': {'mean': [5.0], 'std': [0.0]}}
    """
    if scores.ndim != 2 or scores.shape[0] != len(groups):
        raise ValueError(f"scores must be [n, L] with one group per row; got {tuple(scores.shape)} and {len(groups)}")
    stats: dict[str, dict[str, list[float]]] = {}
    for name in dict.fromkeys(groups):
        chosen = scores[[i for i, g in enumerate(groups) if g == name]].double()
        stats[name] = {"mean": chosen.mean(dim=0).tolist(), "std": chosen.std(dim=0, unbiased=False).tolist()}
    return stats
