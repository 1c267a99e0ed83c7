"""ReGap: subtract the modality drift from the residual stream, with an input-adaptive strength.

Formulas 7–10 of docs/method.md (our reading of Guo et al., arXiv 2605.18104). A correction is a set of vectors
`v_l` subtracted (times α) from decoder-layer outputs inside `corrected(...)`; the hooks are removed in
`finally` and act only on calls from the opening thread, so a steered request never leaks into another.

Generation with a correction is `explorer.correction.generation` (`generate`, `generate_batch`).

>>> cfg = CorrectionConfig(mode="adaptive", strength=1.0).resolved(profile)   # doctest: +SKIP
>>> vectors = correction_vectors(profile, "image", "fixed", cfg.layers)       # doctest: +SKIP
>>> with corrected(lm, vectors, alpha=1.0): ...                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Sequence, get_args

import torch

from explorer.core.vocab import MODES, Mode, check_choice
from explorer.correction.peers import SAMPLE_MODES, peer_layers, sample_vectors
from explorer.geometry.formulas import normalised_score
from explorer.geometry.profile import Profile
from explorer.inputs.media import Prompt
from explorer.model.capture import (
    CaptureSettings,
    capture_prompts,
    last_token_index,
    layer_output,
    pooled_tokens,
    record_layers,
    token_positions,
)
from explorer.model.models import LoadedModel

__all__ = [
    "CorrectedStates",
    "CorrectionConfig",
    "CorrectionPlan",
    "Mode",
    "PositionScope",
    "applied_positions",
    "adaptive_alpha",
    "choose_defaults",
    "correction_vectors",
    "corrected",
    "capture_corrected",
    "plan_correction",
    "self_rectification_score",
    "self_rectification_scores",
]

PositionScope = Literal["all", "prompt", "generated", "last_prompt"]
Rule = Literal["linear", "sigmoid"]


@dataclass(frozen=True)
class CorrectionConfig:
    """How to correct. Empty `layers` / `probe_layer=None` mean: the profile's calibrated defaults.

    Attributes:
        mode: off, fixed (formula 7), fixed_axis (8: fixed along the refusal axis only), adaptive = ReGap (10),
            adaptive_raw = ReGap with the probe uncorrected (11: probe_strength 0, α(x) from the raw score; the
            self-rectification ablation), and the peers as published: shiftdc (12), cmrm (13, dataset level),
            cmrm_sample (14, sample level). Empty `layers` for a peer mode means the peer's own layers.
        strength: α for the fixed-strength modes; α_max for adaptive.
        probe_strength: the fixed α of adaptive's probe pass (1 = remove the whole estimated drift).
        layers: corrected layers; one layer, or a contiguous window (increments, formula 7).
        probe_layer: l*, where adaptive reads the self-rectification score; must follow the corrected layers.
        positions: which positions are corrected: all (prompt + generated), prompt only, generated only.
        rule: adaptive strength rule: sigmoid α_max·σ((s−τ)/T) (default, τ = `threshold`, 0.5: halfway between
            where harmless and harmful text sit), or linear α_max·clip(s,0,1).
        modality_strengths: (modality, α) pairs that replace `strength` for those modalities (e.g. the
            per-modality α_max that `--strength auto` picks: image and audio drift differ in size).
        modality_thresholds: (modality, τ) pairs that replace `threshold` for those modalities (the per-modality
            τ that `--threshold auto` picks: halfway between where the calibration split's harmless and harmful
            inputs of that modality sit after the probe correction).
    """

    mode: Mode = "adaptive"
    strength: float = 1.0
    probe_strength: float = 1.0
    layers: tuple[int, ...] = ()
    probe_layer: int | None = None
    positions: PositionScope = "all"
    rule: Rule = "sigmoid"
    threshold: float = 0.5
    temperature: float = 0.1
    modality_strengths: tuple[tuple[str, float], ...] = ()
    modality_thresholds: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("positions", self.positions, get_args(PositionScope))
        check_choice("rule", self.rule, get_args(Rule))
        named = [("strength", self.strength), ("probe_strength", self.probe_strength)]
        named += [(f"strength for {m}", value) for m, value in self.modality_strengths]
        for name, value in named:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        for name, value in [("threshold", self.threshold)] + [(f"threshold for {m}", t)
                                                              for m, t in self.modality_thresholds]:
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if list(self.layers) != sorted(set(self.layers)) or (
            self.layers and self.layers[-1] - self.layers[0] != len(self.layers) - 1
        ):
            raise ValueError(f"layers must be one contiguous, increasing window, got {self.layers!r}")

    def for_modality(self, modality: str) -> "CorrectionConfig":
        """This config with `strength` (and `threshold`) set to the modality's own α (and τ) where
        `modality_strengths` (`modality_thresholds`) names it."""
        strengths, thresholds = dict(self.modality_strengths), dict(self.modality_thresholds)
        return replace(self, strength=strengths.get(modality, self.strength),
                       threshold=thresholds.get(modality, self.threshold))

    def resolved(self, profile: Profile) -> "CorrectionConfig":
        """This config with empty layers / probe layer filled from the profile's calibrated defaults.

        "adaptive_raw" resolves to "adaptive" with `probe_strength` 0: the same rule, gated on the raw score."""
        if self.mode == "adaptive_raw":
            return replace(self, mode="adaptive", probe_strength=0.0).resolved(profile)
        defaults = choose_defaults(profile)
        layers = self.layers or peer_layers(self.mode, profile.num_layers) or defaults.layers
        probe = self.probe_layer if self.probe_layer is not None else defaults.probe_layer
        if probe is not None and probe < 0:
            probe += profile.num_layers
        if any(not 0 <= layer < profile.num_layers for layer in layers):
            raise ValueError(f"layers {layers} out of range for {profile.num_layers} layers")
        if self.mode == "adaptive" and (probe is None or probe <= layers[-1] or probe >= profile.num_layers):
            raise ValueError(f"probe_layer {probe} must come after the corrected layers {layers}")
        return replace(self, layers=tuple(layers), probe_layer=probe)


def choose_defaults(profile: Profile) -> CorrectionConfig:
    """Calibrated defaults (docs/method.md): the layer where drift costs the most AUROC, and a probe after it."""
    n = profile.num_layers
    text_auroc = profile.metrics["auroc"]["text"]
    drifted = [m for m in profile.drifts if m in profile.metrics["auroc"]]
    upper = max(1, (2 * n) // 3)
    candidates = list(range(min(upper, n - 1)))
    if drifted:
        loss = [max(text_auroc[l] - profile.metrics["auroc"][m][l] for m in drifted) for l in candidates]
        layer = candidates[max(range(len(candidates)), key=lambda i: (loss[i], -i))]
    else:
        layer = candidates[len(candidates) // 2]
    later = list(range(layer + 1, n))
    probe = max(later, key=lambda l: (text_auroc[l], -l)) if later else None
    return CorrectionConfig(mode="adaptive", strength=1.0, layers=(layer,), probe_layer=probe)


def correction_vectors(profile: Profile, modality: str, mode: Mode, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """`v_l` per corrected layer for an input of `modality`, from the profile (formulas 7, 8, 13). Text input gets
    none; the per-sample modes (shiftdc, cmrm_sample) get theirs from `plan_correction`."""
    if mode == "off" or modality == "text" or not layers:
        return {}
    if modality not in profile.drifts:
        raise ValueError(
            f"the profile has no {modality} drift (calibrated modalities: {', '.join(profile.drifts) or 'none'})"
        )
    if mode in SAMPLE_MODES:
        raise ValueError(f"{mode} corrects each input with its own vectors: use plan_correction, not the profile's")
    if mode == "cmrm":  # formula 13: every layer calibrated on its own towards the text-only state (no increments)
        if modality not in profile.blank_shifts:
            raise ValueError(f"the profile has no CMRM {modality} shift: it predates CMRM support; recalibrate")
        return {layer: profile.blank_shifts[modality][layer].float() for layer in layers}
    drift = profile.drifts[modality].double()
    unit = profile.unit_dirs.double()
    vectors: dict[int, torch.Tensor] = {}
    for position, layer in enumerate(layers):  # increments over a window, so nothing is counted twice
        vector = drift[layer] - (drift[layer - 1] if position > 0 else 0.0)
        if mode == "fixed_axis":
            vector = (vector @ unit[layer]) * unit[layer]
        vectors[layer] = vector.float()
    return vectors


@contextmanager
def corrected(
    model: LoadedModel,
    vectors: dict[int, torch.Tensor],
    alpha: float | Sequence[float],
    positions: PositionScope = "all",
    last_positions: torch.Tensor | None = None,
) -> Iterator[None]:
    """Subtract `alpha * vectors[l]` from decoder layer l's output inside the block.

    `vectors[l]` is one vector [d] for every row, or one per batch row [B, d] (per-sample corrections: ShiftDC,
    CMRM's sample level). `alpha` is one number, or one per batch row (each prompt of a batch with its own α(x)).
    A forward pass over more than one position is a prompt pass (prefill or plain forward); a one-position pass
    during cached decoding is a generated token. `positions` picks which of them are corrected; "last_prompt"
    corrects only each row's last prompt token in the prompt pass, at `last_positions` ([B] indices; default the
    last position, as with left padding). Only the opening thread is affected; the hooks are removed even if the
    block raises.
    """
    owner = threading.get_ident()
    handles = []
    per_row = not isinstance(alpha, (int, float))
    scale = torch.tensor(list(alpha), dtype=torch.float32)[:, None, None] if per_row else float(alpha)  # type: ignore[arg-type]

    def make_hook(shift: torch.Tensor):
        def hook(_module: torch.nn.Module, _inputs: object, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            hidden = layer_output(output)
            is_prompt = hidden.shape[1] > 1
            if (positions in ("prompt", "last_prompt") and not is_prompt) or (positions == "generated" and is_prompt):
                return None
            delta = shift.to(hidden.device, hidden.dtype)
            if positions == "last_prompt":
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                cols = (last_positions.to(hidden.device) if last_positions is not None
                        else torch.full_like(rows, hidden.shape[1] - 1))
                shifted = hidden.clone()
                shifted[rows, cols] = hidden[rows, cols] - (delta[:, 0] if delta.dim() == 3 else delta)
            else:
                shifted = hidden - delta
            return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

        return hook

    try:
        if per_row or scale != 0:
            for layer, vector in vectors.items():
                # [B, 1, d] with one α or one vector per row, else [d]
                shift = scale * (vector[:, None, :] if vector.dim() == 2 else vector)
                handles.append(model.layers[layer].register_forward_hook(make_hook(shift)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def adaptive_alpha(score: float, config: CorrectionConfig) -> float:
    """α(x) from the self-rectification score (formula 10)."""
    if config.rule == "linear":
        return config.strength * min(max(score, 0.0), 1.0)
    return config.strength / (1.0 + math.exp(-(score - config.threshold) / config.temperature))


@dataclass
class CorrectedStates:
    """States of a batch of prompts captured with a correction on, and the s(x), α(x) each one got."""

    states: torch.Tensor  # [n, layers, d]
    alphas: list[float]
    scores: list[float | None]


def self_rectification_scores(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    profile: Profile,
    config: CorrectionConfig,
    settings: CaptureSettings = CaptureSettings(),
) -> list[float]:
    """s(x) per prompt: the probe layer's normalised refusal score after the probe correction (formula 10)."""
    config = config.resolved(profile)
    probe = config.probe_layer
    assert probe is not None
    vectors = correction_vectors(profile, prompts[0].modality, "fixed", config.layers)
    backend = model.backend(prompts[0].modality)
    unit = profile.unit_dirs[probe].double()
    harmless = profile.proj_means["text/harmless"][probe : probe + 1]
    harmful = profile.proj_means["text/harmful"][probe : probe + 1]
    scores: list[float] = []
    n_tokens = pooled_tokens(model, prompts[0].modality, profile.pooling)  # pooled as the profile's statistics
    for start in range(0, len(prompts), settings.batch_size):
        inputs = model.encode(prompts[start : start + settings.batch_size], padding_side="right")
        # the forward stops at the probe layer: later layers and the vocabulary projection are not needed
        with corrected(model, vectors, config.probe_strength, "prompt"), record_layers(
            model, [probe], stop_early=True, keep=token_positions(inputs["attention_mask"], n_tokens)
        ) as record:
            backend.model(**inputs, use_cache=False)
        hidden = record.outputs[probe]  # [batch, n_tokens, d]: gathered at the last prompt tokens inside the hook
        assert hidden is not None
        state = (hidden[:, -1].float() if n_tokens == 1 else hidden.double().mean(dim=1).float()).cpu()
        projection = (state.double() @ unit)[:, None]  # formula 2 at the probe layer
        scores += normalised_score(projection, harmless, harmful)[:, 0].tolist()  # formula 6
    return scores


def self_rectification_score(model: LoadedModel, prompt: Prompt, profile: Profile, config: CorrectionConfig) -> float:
    """s(x) for one prompt (formula 10)."""
    return self_rectification_scores(model, [prompt], profile, config)[0]


@dataclass
class CorrectionPlan:
    """What a batch of prompts (one modality) gets: the vectors (one [d] for all rows, or [rows, d] per row), each
    row's α and s(x), and the positions corrected."""

    vectors: dict[int, torch.Tensor]
    alphas: list[float]
    scores: list[float | None]
    positions: PositionScope

    def rows(self, start: int, end: int) -> dict[int, torch.Tensor]:
        """The vectors of rows start..end-1 (per-row vectors sliced; shared ones as they are)."""
        return {layer: v[start:end] if v.dim() == 2 else v for layer, v in self.vectors.items()}


def applied_positions(mode: str, positions: PositionScope) -> PositionScope:
    """Where `mode` corrects when asked for `positions`: ShiftDC always the last prompt token at prefill, as its
    authors apply it (docs/method.md, 12); every other mode where asked."""
    return "last_prompt" if mode == "shiftdc" else positions


def plan_correction(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    profile: Profile | None,
    config: CorrectionConfig,
    settings: CaptureSettings = CaptureSettings(),
) -> CorrectionPlan:
    """The one place that turns a config into vectors and strengths, for `generate`, `generate_batch` and
    `capture_corrected` alike. `config` must be resolved (`CorrectionConfig.resolved`); the modality's own α is
    applied here. Adaptive: a probe pass gives s(x) per prompt (formula 10). ShiftDC / CMRM sample level: extra
    passes give each prompt its own vectors (`explorer.correction.peers`). Text prompts are never corrected."""
    n = len(prompts)
    modality = prompts[0].modality
    if config.mode == "off" or modality == "text" or profile is None:
        return CorrectionPlan({}, [0.0] * n, [None] * n, config.positions)
    config = config.for_modality(modality)
    scores: list[float | None] = [None] * n
    alphas = [config.strength] * n
    if config.mode == "adaptive":
        scores = list(self_rectification_scores(model, prompts, profile, config, settings))
        alphas = [adaptive_alpha(s, config) for s in scores]  # type: ignore[arg-type]
    if config.mode in SAMPLE_MODES:
        vectors = sample_vectors(model, prompts, profile, config.mode, config.layers, settings)
    else:
        vectors = correction_vectors(profile, modality, "fixed" if config.mode == "adaptive" else config.mode,
                                     config.layers)
    return CorrectionPlan(vectors, alphas, scores, applied_positions(config.mode, config.positions))


def capture_corrected(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    profile: Profile,
    config: CorrectionConfig,
    settings: CaptureSettings = CaptureSettings(),
) -> CorrectedStates:
    """Prompt states (one modality) with the correction on, each prompt at the α (and vectors) that `generate`
    gives it. Text prompts are never corrected."""
    resolved = config.resolved(profile) if config.mode != "off" else config
    plan = plan_correction(model, prompts, profile, resolved, settings)
    if not plan.vectors:
        return CorrectedStates(capture_prompts(model, prompts, settings), plan.alphas, plan.scores)

    def steer(start: int, mask: torch.Tensor):
        end = start + mask.shape[0]
        return corrected(model, plan.rows(start, end), plan.alphas[start:end], plan.positions, last_token_index(mask))

    return CorrectedStates(capture_prompts(model, prompts, settings, steer=steer), plan.alphas, plan.scores)
