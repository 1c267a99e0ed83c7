"""The per-layer block of metrics.json, computed one way for the CLI's evaluation and for the app.

Why one module: the app's separability plot and Export, and `eval`'s metrics.json and report, describe the same
states with the same numbers; two implementations had drifted apart (different key names, a different count
field, intervals on float32 in one and float64 in the other). Both now call `separation_per_layer` for each
"<modality>/<mode>" job and `per_layer_block` to assemble the block (docs/method.md, formulas 3, 4, 4c).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from explorer.core.intervals import auroc_intervals
from explorer.geometry.formulas import (
    accuracy_at_threshold,
    auroc_per_layer,
    refusal_gap,
)
from explorer.geometry.profile import Profile

__all__ = ["CALIBRATION_KEYS", "SEPARATION_KEYS", "per_layer_block", "separation_per_layer"]

#: Per-layer separation of one job's states, keyed "<modality>/<mode>" in the block.
SEPARATION_KEYS = ("auroc", "auroc_ci", "refusal_gap", "accuracy_at_text_threshold")
#: Per-layer geometry of the calibration set, keyed by modality (from the profile).
CALIBRATION_KEYS = ("drift_norm", "cos_drift_refusal", "collapse_ratio", "cos_refusal_within")


def separation_per_layer(profile: Profile, projections: torch.Tensor, labels: Sequence[str]) -> dict[str, list]:
    """AUROC with its 95% bootstrap interval, the refusal gap and the accuracy at the text threshold, per layer, of
    projections `[n, L]` on `profile`'s refusal axis; empty when the labels are not both present (a harmful-only
    set: none of these is defined there)."""
    if len(set(labels)) != 2:
        return {}
    return {
        "auroc": auroc_per_layer(projections, labels),
        "auroc_ci": auroc_intervals(projections.double().numpy(), labels),
        "refusal_gap": refusal_gap(projections, labels),
        "accuracy_at_text_threshold": accuracy_at_threshold(profile.score_of_projections(projections), labels),
    }


def per_layer_block(profile: Profile, jobs: Mapping[str, dict[str, list]], counts: Mapping[str, int]) -> dict[str, Any]:
    """metrics.json's `per_layer`: each job's `separation_per_layer` under its "<modality>/<mode>" key, `n` (the
    states each job measured), the calibration geometry keyed by modality, `input_dependent` (adaptive's media jobs:
    their corrected states depend on the score being measured, formula 4c) and `not_applicable` (jobs with one
    label only)."""
    block: dict[str, Any] = {name: {key: job[name] for key, job in jobs.items() if job} for name in SEPARATION_KEYS}
    block["n"] = dict(counts)
    block["input_dependent"] = sorted(k for k in block["auroc"] if k.endswith("/adaptive") and not k.startswith("text/"))
    for name in CALIBRATION_KEYS:
        block[name] = dict(profile.metrics.get(name, {}))
    block["not_applicable"] = sorted(set(jobs) - set(block["auroc"]))
    return block
