"""ReGap: subtract the modality drift from the residual stream, with an input-adaptive strength.

Formulas 7–10 of docs/method.md (our reading of Guo et al., arXiv 2605.18104). A correction is a set of vectors
`v_l` subtracted (times α) from decoder-layer outputs inside `corrected(...)`; the hooks are removed in
`finally` and act only on calls from the opening thread, so a steered request never leaks into another.

>>> cfg = CorrectionConfig(mode="adaptive", strength=1.0)          # doctest: +SKIP
>>> result = generate(lm, prompt, profile, cfg, max_new_tokens=64)  # doctest: +SKIP
>>> result.text, result.score, result.alpha                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Literal, Sequence, get_args

import torch

from .capture import layer_output, record_layers
from .geometry import Profile
from .models import LoadedModel
from .render import Prompt

__all__ = [
    "CorrectionConfig",
    "GenerationResult",
    "Mode",
    "PositionScope",
    "adaptive_alpha",
    "choose_defaults",
    "correction_vectors",
    "corrected",
    "generate",
    "self_rectification_score",
]

Mode = Literal["off", "fixed", "shiftdc", "cmrm", "adaptive"]
PositionScope = Literal["all", "prompt", "generated"]
Rule = Literal["linear", "sigmoid"]


def _check_choice(name: str, value: object, kind: object) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass(frozen=True)
class CorrectionConfig:
    """How to correct. Empty `layers` / `probe_layer=None` mean: the profile's calibrated defaults.

    Attributes:
        mode: off, fixed (formula 7), shiftdc (8), cmrm (9), adaptive = ReGap (10).
        strength: α for fixed/shiftdc/cmrm; α_max for adaptive.
        layers: corrected layers; one layer, or a contiguous window (increments, formula 7).
        probe_layer: l*, where adaptive reads the self-rectification score; must follow the corrected layers.
        positions: which positions are corrected: all (prompt + generated), prompt only, generated only.
        rule: adaptive strength rule: linear α_max·clip(s,0,1), or sigmoid α_max·σ((s−τ)/T).
    """

    mode: Mode = "adaptive"
    strength: float = 1.0
    layers: tuple[int, ...] = ()
    probe_layer: int | None = None
    positions: PositionScope = "all"
    rule: Rule = "linear"
    threshold: float = 0.5
    temperature: float = 0.1

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, Mode)
        _check_choice("positions", self.positions, PositionScope)
        _check_choice("rule", self.rule, Rule)
        if not math.isfinite(self.strength) or self.strength < 0:
            raise ValueError(f"strength must be a finite number ≥ 0, got {self.strength!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if list(self.layers) != sorted(set(self.layers)) or (
            self.layers and self.layers[-1] - self.layers[0] != len(self.layers) - 1
        ):
            raise ValueError(f"layers must be one contiguous, increasing window, got {self.layers!r}")

    def resolved(self, profile: Profile) -> "CorrectionConfig":
        """This config with empty layers / probe layer filled from the profile's calibrated defaults."""
        defaults = choose_defaults(profile)
        layers = self.layers or defaults.layers
        probe = self.probe_layer if self.probe_layer is not None else defaults.probe_layer
        if probe is not None and probe < 0:
            probe += profile.num_layers
        if any(not 0 <= layer < profile.num_layers for layer in layers):
            raise ValueError(f"layers {layers} out of range for {profile.num_layers} layers")
        if self.mode == "adaptive" and (probe is None or probe <= layers[-1] or probe >= profile.num_layers):
            raise ValueError(f"probe_layer {probe} must come after the corrected layers {layers}")
        return replace(self, layers=tuple(layers), probe_layer=probe)


@dataclass
class GenerationResult:
    """One generation: the text, its tokens, and the correction actually applied."""

    text: str
    token_ids: list[int]
    mode: Mode
    modality: str
    alpha: float
    score: float | None = None
    layers: tuple[int, ...] = ()
    probe_layer: int | None = None
    prompt_states: torch.Tensor | None = field(default=None, repr=False)  # [layers, d], as corrected


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
    """`v_l` per corrected layer for an input of `modality` (formulas 7–9). Text input gets none."""
    if mode == "off" or modality == "text" or not layers:
        return {}
    if modality not in profile.drifts:
        raise ValueError(
            f"the profile has no {modality} drift (calibrated modalities: {', '.join(profile.drifts) or 'none'})"
        )
    drift = profile.drifts[modality].double()
    unit = profile.unit_dirs.double()
    vectors: dict[int, torch.Tensor] = {}
    for position, layer in enumerate(layers):
        if mode == "cmrm":
            vector = drift[layer]
        else:  # fixed / adaptive / shiftdc: increments over a window, so nothing is counted twice
            vector = drift[layer] - (drift[layer - 1] if position > 0 else 0.0)
            if mode == "shiftdc":
                vector = (vector @ unit[layer]) * unit[layer]
        vectors[layer] = vector.float()
    return vectors


@contextmanager
def corrected(
    model: LoadedModel, vectors: dict[int, torch.Tensor], alpha: float, positions: PositionScope = "all"
) -> Iterator[None]:
    """Subtract `alpha * vectors[l]` from decoder layer l's output inside the block.

    The first call of each layer is the prompt (prefill); later calls are cached decoding steps, one generated
    token each. `positions` picks which of them are corrected. Only the opening thread is affected.
    """
    owner = threading.get_ident()
    handles = []
    calls = {layer: 0 for layer in vectors}

    def make_hook(layer: int, shift: torch.Tensor):
        def hook(_module: torch.nn.Module, _inputs: object, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            is_prompt = calls[layer] == 0
            calls[layer] += 1
            if (positions == "prompt" and not is_prompt) or (positions == "generated" and is_prompt):
                return None
            hidden = layer_output(output)
            shifted = hidden - shift.to(hidden.device, hidden.dtype)
            return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

        return hook

    try:
        if alpha != 0:
            for layer, vector in vectors.items():
                handles.append(model.layers[layer].register_forward_hook(make_hook(layer, alpha * vector)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def adaptive_alpha(score: float, config: CorrectionConfig) -> float:
    """α(x) from the self-rectification score (formula 10)."""
    if config.rule == "linear":
        return config.strength * min(max(score, 0.0), 1.0)
    return config.strength / (1.0 + math.exp(-(score - config.threshold) / config.temperature))


@torch.inference_mode()
def self_rectification_score(
    model: LoadedModel, prompt: Prompt, profile: Profile, config: CorrectionConfig
) -> float:
    """s(x): the probe layer's normalised refusal score after a fixed-strength correction (formula 10)."""
    config = config.resolved(profile)
    vectors = correction_vectors(profile, prompt.modality, "fixed", config.layers)
    inputs = model.encode([prompt])
    with corrected(model, vectors, config.strength, "prompt"), record_layers(model, [config.probe_layer]) as rec:
        model.backend(prompt.modality).model(**inputs, use_cache=False)
    hidden = rec.outputs[config.probe_layer]
    assert hidden is not None
    state = hidden[0, -1].float().cpu()
    full = torch.zeros(profile.num_layers, state.shape[-1])
    full[config.probe_layer] = state
    return float(profile.score(full[None])[0, config.probe_layer])


@torch.inference_mode()
def generate(
    model: LoadedModel,
    prompt: Prompt,
    profile: Profile | None,
    config: CorrectionConfig = CorrectionConfig(mode="off"),
    max_new_tokens: int = 64,
    seed: int | None = None,
    streamer: Any = None,
    capture_prompt_states: bool = False,
    min_new_tokens: int = 0,
) -> GenerationResult:
    """Generate for one prompt with the configured correction (greedy unless a seed asks for sampling).

    `capture_prompt_states` also returns the prompt's last-token states as corrected (from the same prefill
    pass, at no extra forward cost); `min_new_tokens` is for like-for-like timing.
    """
    if config.mode != "off" and profile is None:
        raise ValueError(f"mode {config.mode!r} needs a calibration profile; calibrate first or use mode='off'")
    resolved = config.resolved(profile) if profile is not None and config.mode != "off" else config
    score: float | None = None
    alpha = 0.0 if resolved.mode == "off" or prompt.modality == "text" else resolved.strength
    if resolved.mode == "adaptive" and prompt.modality != "text":
        score = self_rectification_score(model, prompt, profile, resolved)  # type: ignore[arg-type]
        alpha = adaptive_alpha(score, resolved)
    mode_for_vectors: Mode = "fixed" if resolved.mode == "adaptive" else resolved.mode
    vectors = correction_vectors(profile, prompt.modality, mode_for_vectors, resolved.layers) if profile else {}
    inputs = model.encode([prompt], padding_side="left")
    backend = model.backend(prompt.modality)
    sampling: dict[str, Any] = {"do_sample": False}
    if seed is not None:
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
    tokenizer = backend.tokenizer
    recorder = record_layers(model, first_call_only=True) if capture_prompt_states else nullcontext()
    with corrected(model, vectors, alpha, resolved.positions), recorder as rec:
        output = backend.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            streamer=streamer,
            **sampling,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    states = rec.last_token(inputs["attention_mask"])[0] if capture_prompt_states else None
    return GenerationResult(
        text=model.decode(prompt.modality, new_tokens),
        token_ids=new_tokens,
        mode=resolved.mode,
        modality=prompt.modality,
        alpha=alpha,
        score=score,
        layers=resolved.layers,
        probe_layer=resolved.probe_layer,
        prompt_states=states,
    )
