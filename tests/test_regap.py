"""Tests for explorer.correction.regap on tiny random-weight models: exact patching, strength 0 = baseline, adaptive α, threads."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest
import torch
from noise_prompts import TEXTS, image_prompt

from explorer.core.vocab import MODES
from explorer.correction.generation import generate
from explorer.correction.regap import (
    CorrectionConfig,
    capture_corrected,
    corrected,
    correction_vectors,
)
from explorer.geometry.profile import Profile
from explorer.inputs.media import IMAGE_CARRIER, Prompt
from explorer.model.capture import CaptureSettings, capture_prompts, record_layers


def _profile_for(lm, drift_scale: float = 3.0) -> Profile:
    """A profile whose image drift is a fixed random vector, big enough to change greedy tokens."""
    gen = torch.Generator().manual_seed(0)
    L, d = lm.num_layers, lm.hidden_size
    means = {k: torch.randn(L, d, generator=gen) for k in ("text/harmful", "text/harmless", "image/harmful",
                                                           "image/harmless")}
    return Profile(
        model_id=lm.name, num_layers=L, hidden_size=d, calibration_hash="x", capture_settings={},
        refusal_dirs=means["text/harmful"] - means["text/harmless"], means=means,
        drifts={"image": drift_scale * torch.randn(L, d, generator=gen)},
        blank_shifts={"image": drift_scale * torch.randn(L, d, generator=gen)},
        proj_means={"text/harmful": torch.ones(L), "text/harmless": torch.zeros(L)},
        metrics={"auroc": {"text": [1.0] * L, "image": [0.6, 0.5, 0.9]}},
    )


def test_patched_layer_equals_original_minus_vector_and_earlier_layers_unchanged(tiny_llava):
    prompt = image_prompt(IMAGE_CARRIER)
    inputs = tiny_llava.encode([prompt])
    model = tiny_llava.backend("image").model
    vector = torch.randn(64)
    with torch.no_grad():
        with record_layers(tiny_llava) as base:
            model(**inputs, use_cache=False)
        with corrected(tiny_llava, {1: vector}, 0.5), record_layers(tiny_llava) as steered:
            model(**inputs, use_cache=False)
    torch.testing.assert_close(steered.outputs[0], base.outputs[0], rtol=0, atol=0)
    torch.testing.assert_close(steered.outputs[1], base.outputs[1] - 0.5 * vector, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(steered.outputs[2], base.outputs[2])


def test_alpha_zero_reproduces_baseline_and_steering_changes_generated_tokens(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompt = image_prompt(IMAGE_CARRIER + " " + TEXTS[0])
    base = generate(tiny_llava, prompt, profile, CorrectionConfig(mode="off"), max_new_tokens=12)
    zero = generate(tiny_llava, prompt, profile, CorrectionConfig(mode="fixed", strength=0.0, layers=(1,)),
                    max_new_tokens=12)
    assert zero.token_ids == base.token_ids and len(base.token_ids) == 12
    steered = generate(tiny_llava, prompt, profile, CorrectionConfig(mode="fixed", strength=1.0, layers=(1,)),
                       max_new_tokens=12)
    assert steered.token_ids != base.token_ids
    # correcting only generated positions must still change output: hooks act during cached decoding
    gen_only = generate(tiny_llava, prompt, profile,
                        CorrectionConfig(mode="fixed", strength=1.0, layers=(1,), positions="generated"),
                        max_new_tokens=12)
    assert gen_only.token_ids[0] == base.token_ids[0]  # first token comes from the uncorrected prompt pass
    assert gen_only.token_ids != base.token_ids
    # text input is never corrected
    text = Prompt(text=TEXTS[0])
    assert (generate(tiny_llava, text, profile, CorrectionConfig(mode="fixed", layers=(1,))).token_ids
            == generate(tiny_llava, text, profile, CorrectionConfig(mode="off")).token_ids)


def test_window_uses_increments_and_dataset_cmrm_does_not(tiny_llava):
    profile = _profile_for(tiny_llava)
    drift = profile.drifts["image"]
    fixed = correction_vectors(profile, "image", "fixed", (0, 1, 2))
    torch.testing.assert_close(sum(fixed.values()), drift[2])
    torch.testing.assert_close(fixed[1], drift[1] - drift[0])
    cmrm = correction_vectors(profile, "image", "cmrm", (0, 1))  # CMRM's own shift, whole at every layer
    torch.testing.assert_close(cmrm[1], profile.blank_shifts["image"][1])
    torch.testing.assert_close(cmrm[0], profile.blank_shifts["image"][0])
    shift = correction_vectors(profile, "image", "fixed_axis", (1,))[1]
    unit = profile.unit_dirs[1]
    torch.testing.assert_close(shift, (drift[1] @ unit) * unit, rtol=1e-5, atol=1e-5)
    assert correction_vectors(profile, "text", "fixed", (1,)) == {}


def test_adaptive_exposes_score_and_alpha(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompt = image_prompt(IMAGE_CARRIER + " " + TEXTS[1])
    config = CorrectionConfig(mode="adaptive", strength=2.0, layers=(0,), probe_layer=2, rule="linear")
    result = generate(tiny_llava, prompt, profile, config, max_new_tokens=4)
    assert result.score is not None and result.mode == "adaptive"
    assert result.alpha == pytest.approx(2.0 * min(max(result.score, 0.0), 1.0))
    sigmoid = generate(tiny_llava, prompt, profile, replace(config, rule="sigmoid", threshold=2.0, temperature=0.5),
                       max_new_tokens=4)
    assert sigmoid.score == pytest.approx(result.score, abs=1e-5)  # the probe does not depend on the rule
    assert sigmoid.alpha == pytest.approx(2.0 / (1.0 + math.exp(-(sigmoid.score - 2.0) / 0.5)))
    # the probe runs at probe_strength, not at α_max
    stronger = generate(tiny_llava, prompt, profile, replace(config, strength=3.0), max_new_tokens=4)
    assert stronger.score == pytest.approx(result.score, abs=1e-5)
    assert stronger.alpha == pytest.approx(3.0 * min(max(result.score, 0.0), 1.0))
    with pytest.raises(ValueError, match="probe_layer"):
        CorrectionConfig(mode="adaptive", layers=(2,), probe_layer=1).resolved(profile)


def test_modality_strengths_override_strength_for_that_modality(tiny_llava):
    """An image prompt under modality_strengths {image: 3} behaves exactly as under strength 3; another
    modality's entry does not touch it; a negative entry is refused."""
    profile = _profile_for(tiny_llava)
    prompt = image_prompt(IMAGE_CARRIER + " " + TEXTS[1])
    config = CorrectionConfig(mode="adaptive", strength=0.5, layers=(0,), probe_layer=2, rule="linear")
    own = generate(tiny_llava, prompt, profile, replace(config, modality_strengths=(("image", 3.0),)), max_new_tokens=6)
    plain_three = generate(tiny_llava, prompt, profile, replace(config, strength=3.0), max_new_tokens=6)
    assert own.alpha == pytest.approx(plain_three.alpha) and own.token_ids == plain_three.token_ids
    other = generate(tiny_llava, prompt, profile, replace(config, modality_strengths=(("audio", 3.0),)), max_new_tokens=6)
    assert other.alpha == pytest.approx(0.5 * min(max(other.score, 0.0), 1.0))
    batch = capture_corrected(tiny_llava, [prompt], profile, replace(config, mode="fixed", modality_strengths=(("image", 3.0),)))
    assert batch.alphas == [3.0]
    with pytest.raises(ValueError, match="strength for image"):
        CorrectionConfig(modality_strengths=(("image", -1.0),))


def test_modality_thresholds_set_the_gate_for_that_modality(tiny_llava):
    """Under modality_thresholds {image: τ}, an image prompt's α(x) is the sigmoid at that τ (its s(x) unchanged);
    an audio entry does not touch it; a non-finite τ is refused."""
    profile = _profile_for(tiny_llava)
    prompt = image_prompt(IMAGE_CARRIER + " " + TEXTS[1])
    config = CorrectionConfig(mode="adaptive", strength=2.0, layers=(0,), probe_layer=2, threshold=0.5,
                              temperature=0.5)
    plain = generate(tiny_llava, prompt, profile, config, max_new_tokens=4)
    tau = plain.score - 0.25  # a τ just below this prompt's score: a wider gate than 0.5 would be for most scores
    own = generate(tiny_llava, prompt, profile, replace(config, modality_thresholds=(("image", tau),)), max_new_tokens=4)
    assert own.score == pytest.approx(plain.score, abs=1e-5)
    assert own.alpha == pytest.approx(2.0 / (1.0 + math.exp(-0.25 / 0.5)), abs=1e-4)
    other = generate(tiny_llava, prompt, profile, replace(config, modality_thresholds=(("audio", tau),)), max_new_tokens=4)
    assert other.alpha == pytest.approx(plain.alpha)
    with pytest.raises(ValueError, match="threshold for image"):
        CorrectionConfig(modality_thresholds=(("image", float("nan")),))


def test_concurrent_steered_and_plain_threads_match_sequential(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompt = image_prompt(IMAGE_CARRIER + " " + TEXTS[2])
    steered_cfg = CorrectionConfig(mode="fixed", strength=1.0, layers=(1,))
    plain_cfg = CorrectionConfig(mode="off")
    expected_plain = generate(tiny_llava, prompt, profile, plain_cfg, max_new_tokens=16).token_ids
    expected_steered = generate(tiny_llava, prompt, profile, steered_cfg, max_new_tokens=16).token_ids
    assert expected_plain != expected_steered
    results: dict[str, list[list[int]]] = {"plain": [], "steered": []}
    barrier = threading.Barrier(2)

    def worker(name, cfg):
        barrier.wait()
        for _ in range(3):
            results[name].append(generate(tiny_llava, prompt, profile, cfg, max_new_tokens=16).token_ids)

    threads = [threading.Thread(target=worker, args=("plain", plain_cfg)),
               threading.Thread(target=worker, args=("steered", steered_cfg))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["plain"] == [expected_plain] * 3
    assert results["steered"] == [expected_steered] * 3


def test_capture_corrected_per_row_alpha_matches_one_by_one(tiny_llava):
    from explorer.correction.regap import self_rectification_score

    profile = _profile_for(tiny_llava)
    prompts = [image_prompt(IMAGE_CARRIER + " " + t, i) for i, t in enumerate(TEXTS)]
    # a steep sigmoid around the middle score, so the three rows get clearly different α(x)
    probe = CorrectionConfig(mode="adaptive", strength=2.0, layers=(0,), probe_layer=2)
    middle = sorted(self_rectification_score(tiny_llava, p, profile, probe) for p in prompts)[1]
    config = CorrectionConfig(mode="adaptive", strength=2.0, layers=(0,), probe_layer=2, rule="sigmoid",
                              threshold=middle, temperature=1e-3)
    batched = capture_corrected(tiny_llava, prompts, profile, config, CaptureSettings(batch_size=3))
    assert len(set(batched.alphas)) > 1  # the rows really get different α(x)
    for i, prompt in enumerate(prompts):
        assert batched.scores[i] == pytest.approx(self_rectification_score(tiny_llava, prompt, profile, config),
                                                  abs=1e-4)
        vectors = correction_vectors(profile, "image", "fixed", (0,))
        with corrected(tiny_llava, vectors, batched.alphas[i]):
            single = capture_prompts(tiny_llava, [prompt])[0]
        torch.testing.assert_close(batched.states[i], single, rtol=1e-4, atol=1e-4)


def test_generate_texts_batched_equals_one_at_a_time_and_plain_generate(tiny_llava):
    """Left-padded batches give each row the tokens it gets alone (prompts of different lengths), and the same
    answer as `generate` without a correction."""
    from explorer.correction.generation import generate, generate_texts

    prompts = [tiny_llava.render(text, "text") for text in TEXTS] + [image_prompt(IMAGE_CARRIER, seed=3)]
    for modality in ("text", "image"):
        group = [p for p in prompts if p.modality == modality]
        batched = generate_texts(tiny_llava, group, max_new_tokens=6, batch_size=len(group))
        alone = [generate_texts(tiny_llava, [p], max_new_tokens=6)[0] for p in group]
        assert batched == alone
        assert alone == [generate(tiny_llava, p, None, max_new_tokens=6).text for p in group]
    with pytest.raises(ValueError, match="batch_size"):
        generate_texts(tiny_llava, prompts[:1], batch_size=0)


@pytest.mark.parametrize("mode", MODES)
def test_generate_batch_equals_generate_one_prompt_at_a_time(tiny_llava, mode):
    """Batched greedy generation (left padding, one α(x) per row for adaptive, one batched probe pass) gives every
    row the tokens, α, score and prompt states that `generate` gives it alone: images of different sizes and
    carrier texts of different lengths make the rows' lengths differ."""
    from explorer.correction.generation import generate_batch

    profile = _profile_for(tiny_llava)
    config = CorrectionConfig(mode=mode, strength=1.5)
    prompts = [image_prompt(IMAGE_CARRIER + extra, seed=i) for i, extra in enumerate(["", " Please.", " Now, in detail."])]
    batched = generate_batch(tiny_llava, prompts, profile, config, max_new_tokens=8, capture_prompt_states=True)
    for prompt, got in zip(prompts, batched):
        alone = generate(tiny_llava, prompt, profile, config, max_new_tokens=8, capture_prompt_states=True)
        assert got.token_ids == alone.token_ids and got.text == alone.text
        assert got.alpha == pytest.approx(alone.alpha, abs=1e-6)
        assert (got.score is None) == (alone.score is None)
        if got.score is not None:
            assert got.score == pytest.approx(alone.score, abs=1e-5)
        torch.testing.assert_close(got.prompt_states, alone.prompt_states, rtol=1e-4, atol=1e-4)


def test_template_mean_pooling_is_honoured_by_the_probe_and_the_eval_states(tiny_llava, tmp_path):
    """With a profile calibrated on template-mean states, s(x) and the states `generate_batch` records are pooled
    the same way (they were read at the last token before: s(x) normalised with the wrong statistics)."""
    from explorer.correction.generation import generate_batch
    from explorer.correction.regap import (
        CorrectionConfig,
        corrected,
        correction_vectors,
        self_rectification_scores,
    )
    from explorer.evaluation.calibration import calibrate, load_calibration_items
    from explorer.geometry.formulas import normalised_score
    from explorer.model.capture import CaptureSettings, capture_prompts

    pooled = CaptureSettings(pooling="template_mean")
    profile = calibrate(tiny_llava, load_calibration_items("builtin", limit=3), ["text", "image"], pooled,
                        cache_dir=tmp_path).profile
    assert profile.pooling == "template_mean"
    prompts = [tiny_llava.render(i, "image") for i in load_calibration_items("builtin", limit=2)]
    config = CorrectionConfig(mode="adaptive").resolved(profile)
    probe = config.probe_layer
    with corrected(tiny_llava, correction_vectors(profile, "image", "fixed", config.layers), 1.0, "prompt"):
        states = capture_prompts(tiny_llava, prompts, pooled)[:, probe]
    projection = (states.double() @ profile.unit_dirs[probe].double())[:, None]
    expected = normalised_score(projection, profile.proj_means["text/harmless"][probe : probe + 1],
                                profile.proj_means["text/harmful"][probe : probe + 1])[:, 0].tolist()
    assert self_rectification_scores(tiny_llava, prompts, profile, config) == pytest.approx(expected, abs=1e-5)
    results = generate_batch(tiny_llava, prompts, profile, CorrectionConfig(mode="off"), max_new_tokens=1,
                             capture_prompt_states=True)
    recorded = torch.stack([r.prompt_states for r in results])
    torch.testing.assert_close(recorded, capture_prompts(tiny_llava, prompts, pooled), rtol=1e-4, atol=1e-4)
    last = capture_prompts(tiny_llava, prompts, CaptureSettings())
    assert not torch.allclose(recorded, last, atol=1e-3)  # and the pooling really differs from the last token


def test_adaptive_raw_gates_on_the_uncorrected_score(tiny_llava, tiny_calibration, tmp_path):
    """The self-rectification ablation: "adaptive_raw" is adaptive with the probe uncorrected, so s(x) is the raw
    score of the input (no correction before the probe layer) and everything else is adaptive's."""
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation.calibration import load_calibration_items
    from explorer.geometry.formulas import normalised_score
    from explorer.model.capture import capture_prompts

    profile = tiny_calibration.profile
    prompt = tiny_llava.render(load_calibration_items("builtin", limit=1)[0], "image")
    raw = generate(tiny_llava, prompt, profile, CorrectionConfig(mode="adaptive_raw", strength=2.0), max_new_tokens=3)
    same = generate(tiny_llava, prompt, profile, CorrectionConfig(mode="adaptive", strength=2.0, probe_strength=0.0),
                    max_new_tokens=3)
    assert (raw.text, raw.score, raw.alpha) == (same.text, same.score, same.alpha)
    probe = CorrectionConfig().resolved(profile).probe_layer
    state = capture_prompts(tiny_llava, [prompt])[:, probe]
    expected = normalised_score((state.double() @ profile.unit_dirs[probe].double())[:, None],
                                profile.proj_means["text/harmless"][probe : probe + 1],
                                profile.proj_means["text/harmful"][probe : probe + 1])[0, 0]
    assert raw.score == pytest.approx(float(expected), abs=1e-5)
    corrected_probe = generate(tiny_llava, prompt, profile, CorrectionConfig(mode="adaptive", strength=2.0),
                               max_new_tokens=3)
    assert corrected_probe.score != pytest.approx(raw.score, abs=1e-4)  # the corrected probe reads another state
