"""Generate answers, with or without a correction: one prompt (`generate`), a batch (`generate_batch`), or plain
greedy text for any prompts (`generate_texts`).

Batches use left padding, so every row ends at its last prompt token and its tokens do not depend on its
neighbours' lengths; adaptive ReGap gives each row its own α(x) (`corrected` takes one α per row). Sampling
(a seed) is one prompt at a time: torch's random generator is global, so seeded runs take turns.

>>> cfg = CorrectionConfig(mode="adaptive", strength=1.0)          # doctest: +SKIP
>>> result = generate(lm, prompt, profile, cfg, max_new_tokens=64)  # doctest: +SKIP
>>> result.text, result.score, result.alpha                        # doctest: +SKIP
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from explorer.correction.regap import CorrectionConfig, Mode, corrected, plan_correction
from explorer.geometry.profile import Profile
from explorer.inputs.media import Prompt
from explorer.model.capture import (
    CaptureSettings,
    pooled_tokens,
    record_layers,
    token_positions,
)
from explorer.model.models import LoadedModel

__all__ = ["GenerationResult", "generate", "generate_batch", "generate_texts"]


_SAMPLING_LOCK = threading.Lock()


def _stopping_when_set(event: threading.Event | None) -> Any:
    """Stopping criteria that end `generate` once `event` is set, checked after every token (None: no event).
    How a cancelled request ends its worker thread instead of generating on for nobody."""
    if event is None:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


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
    stop: threading.Event | None = None,
) -> GenerationResult:
    """Generate for one prompt with the configured correction (greedy unless a seed asks for sampling).

    `capture_prompt_states` also returns the prompt's last-token states as corrected (from the same prefill
    pass, at no extra forward cost); `min_new_tokens` is for like-for-like timing. `stop`, once set (from any
    thread), ends the generation after the token being computed: the result holds the tokens made so far.
    """
    if config.mode != "off" and profile is None:
        raise ValueError(f"mode {config.mode!r} needs a calibration profile; calibrate first or use mode='off'")
    resolved = config.resolved(profile) if profile is not None and config.mode != "off" else config
    resolved = resolved.for_modality(prompt.modality)
    plan = plan_correction(model, [prompt], profile, resolved)
    inputs = model.encode([prompt], padding_side="left")
    backend = model.backend(prompt.modality)
    sampling: dict[str, Any] = {"do_sample": False}
    rng_guard: Any = nullcontext()
    if seed is not None:
        sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
        rng_guard = _SAMPLING_LOCK  # torch's RNG is global: seeded runs take turns, so each is reproducible
    tokenizer = backend.tokenizer
    n_tokens = pooled_tokens(model, prompt.modality, profile.pooling if profile is not None else "last")
    recorder = (record_layers(model, first_call_only=True, keep=token_positions(inputs["attention_mask"], n_tokens))
                if capture_prompt_states else nullcontext())
    with rng_guard, corrected(model, plan.vectors, plan.alphas, plan.positions), recorder as rec:
        if seed is not None:
            torch.manual_seed(seed)
        output = backend.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            streamer=streamer,
            stopping_criteria=_stopping_when_set(stop),
            **sampling,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    states = rec.pooled(inputs["attention_mask"], n_tokens)[0] if capture_prompt_states else None
    return GenerationResult(
        text=model.decode(prompt.modality, new_tokens),
        token_ids=new_tokens,
        mode=resolved.mode,
        modality=prompt.modality,
        alpha=plan.alphas[0],
        score=plan.scores[0],
        layers=resolved.layers,
        probe_layer=resolved.probe_layer,
        prompt_states=states,
    )


@torch.inference_mode()
def generate_texts(model: LoadedModel, prompts: Sequence[Prompt], max_new_tokens: int = 64, batch_size: int = 32) -> list[str]:
    """Greedy answers for prompts of one modality, in batches with left padding (all rows end at their last
    prompt token, so a row's tokens do not depend on its neighbours' lengths). A `corrected(...)` block the
    caller holds applies to every row; for per-prompt correction with a profile use `generate`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        backend = model.backend(batch[0].modality)
        tokenizer = backend.tokenizer
        inputs = model.encode(batch, padding_side="left")
        output = backend.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [model.decode(batch[0].modality, row.tolist()) for row in new_tokens]
    return answers


def _eos_ids(backend_model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(backend_model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())


def _until_eos(row: list[int], eos: set[int]) -> list[int]:
    """A batch row's new tokens up to and including its end of sequence (the rest is padding)."""
    for index, token in enumerate(row):
        if token in eos:
            return row[: index + 1]
    return row


@torch.inference_mode()
def generate_batch(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    profile: Profile | None,
    config: CorrectionConfig = CorrectionConfig(mode="off"),
    max_new_tokens: int = 64,
    capture_prompt_states: bool = False,
) -> list[GenerationResult]:
    """Greedy generation for prompts of one modality in one batch, each with the correction `generate` would give
    it alone: adaptive ReGap runs one batched probe pass and applies each row's α(x). Equal, row for row, to
    calling `generate` on each prompt (tested for every mode)."""
    if not prompts:
        return []
    modality = prompts[0].modality
    if any(p.modality != modality for p in prompts):
        raise ValueError("generate_batch takes prompts of one modality at a time")
    if config.mode != "off" and profile is None:
        raise ValueError(f"mode {config.mode!r} needs a calibration profile; calibrate first or use mode='off'")
    resolved = config.resolved(profile) if profile is not None and config.mode != "off" else config
    resolved = resolved.for_modality(modality)
    plan = plan_correction(model, prompts, profile, resolved, CaptureSettings(batch_size=len(prompts)))
    alphas, scores = plan.alphas, plan.scores
    inputs = model.encode(prompts, padding_side="left")
    backend = model.backend(modality)
    tokenizer = backend.tokenizer
    n_tokens = pooled_tokens(model, modality, profile.pooling if profile is not None else "last")
    recorder = (record_layers(model, first_call_only=True, keep=token_positions(inputs["attention_mask"], n_tokens))
                if capture_prompt_states else nullcontext())
    with corrected(model, plan.vectors, alphas, plan.positions), recorder as rec:
        output = backend.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    states = rec.pooled(inputs["attention_mask"], n_tokens) if capture_prompt_states else None
    eos = _eos_ids(backend.model, tokenizer)
    results = []
    for row, tokens in enumerate(output[:, inputs["input_ids"].shape[1] :].tolist()):
        kept = _until_eos(tokens, eos)
        results.append(GenerationResult(
            text=model.decode(modality, kept), token_ids=kept, mode=resolved.mode, modality=modality,
            alpha=alphas[row], score=scores[row], layers=resolved.layers, probe_layer=resolved.probe_layer,
            prompt_states=states[row] if states is not None else None,
        ))
    return results
