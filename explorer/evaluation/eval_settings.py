"""What an evaluation runs (`EvalSettings`): modalities, modes, the correction, the judge and each mode's own α.

Why its own module: the runner (explorer.evaluation.runner) and the metrics (explorer.evaluation.eval_metrics) both read it, and
the metrics must not import the runner that calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from explorer.core.vocab import Modality, Mode
from explorer.correction.regap import CorrectionConfig
from explorer.evaluation.calibration import ThresholdChoice
from explorer.evaluation.judge import Judge, RefusalJudge
from explorer.evaluation.strength import StrengthChoice

__all__ = ["EvalSettings"]


@dataclass(frozen=True)
class EvalSettings:
    """What `evaluate` runs. `correction` carries strength, layers, probe layer, positions and rule."""

    modalities: tuple[Modality, ...] = ("text", "image")
    modes: tuple[Mode, ...] = ("off", "adaptive")
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    max_new_tokens: int = 48
    judge: Judge = field(default_factory=RefusalJudge)  # the phrase judge, or a model judge (explorer.evaluation.judge_model)
    #: how `--strength auto` chose each mode's own α (per modality) on calibration; recorded in metrics
    strength_choices: Mapping[str, StrengthChoice] = field(default_factory=dict)
    #: how `--threshold auto` chose each adaptive mode's gate τ (per modality) on calibration; recorded in metrics
    threshold_choices: Mapping[str, ThresholdChoice] = field(default_factory=dict)
    batch_size: int = 8  # prompts generated together (greedy: the same tokens as one at a time)
    calibration_source: str = ""  # where the profile and α were calibrated ("builtin", "validation", a path)
    #: evaluation items that overlap the calibration set (explorer.inputs.overlap.calibration_overlap), for metrics.json
    calibration_overlap: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.modalities or not self.modes:
            raise ValueError("evaluate needs at least one modality and one mode")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        for mode in self.modes:
            replace(self.correction, mode=mode)  # validates the mode name

    def generated_under(self, modality: str, mode: str) -> str:
        """The mode whose generation stands for (modality, mode): text is never corrected, so it is generated once,
        under the first mode, and that record counts for every mode."""
        return mode if modality != "text" else self.modes[0]

    def correction_for(self, mode: str) -> CorrectionConfig:
        """The correction `mode` runs with: its own chosen strengths (and gate τ) when `--strength auto`
        (`--threshold auto`) chose them, so every mode is compared at its own tuned setting under the same
        over-refusal budget, never at another mode's."""
        config = replace(self.correction, mode=mode)
        threshold = self.threshold_choices.get(mode)
        config = threshold.apply(config) if threshold is not None else config
        choice = self.strength_choices.get(mode)
        return choice.apply(config) if choice is not None else config

    @property
    def mode_strengths(self) -> dict[str, dict[str, float]]:
        """{mode: {modality: α}} of every correcting mode, as each runs (`regap.mode_strengths` in metrics)."""
        out = {}
        for mode in self.modes:
            if mode == "off":
                continue
            config = self.correction_for(mode)
            out[mode] = {m: config.for_modality(m).strength for m in self.modalities if m != "text"}
        return out

    @property
    def mode_thresholds(self) -> dict[str, dict[str, float]]:
        """{mode: {modality: τ}} of every mode whose gate τ `--threshold auto` chose (`regap.mode_thresholds`)."""
        return {mode: {m: self.correction_for(mode).for_modality(m).threshold for m in self.modalities if m != "text"}
                for mode in self.modes if mode in self.threshold_choices}
