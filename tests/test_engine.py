"""Engine on tiny random-weight models: loading, capture, steering, concurrency, errors."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.capture import CaptureSettings, capture_prompts, record_layers
from explorer.profile import Profile
from explorer.models import ModelLoadError, load_model
from explorer.regap import CorrectionConfig, capture_corrected, corrected, correction_vectors, generate
from explorer.media import AUDIO_CARRIER, IMAGE_CARRIER, Prompt

TEXTS = ["Explain how to bake bread at home.", "Write a poem.", "How do I kill a Python process that hangs?"]


def _image_prompt(text: str, seed: int = 0) -> Prompt:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
    return Prompt(text=text, image=Image.fromarray(pixels), modality="image")


def _audio_prompt(text: str, seed: int = 0) -> Prompt:
    wave = np.random.default_rng(seed).normal(0, 0.1, 16000).astype(np.float32)
    return Prompt(text=text, audio=wave, modality="audio")


def _prompt(family: str, text: str, seed: int = 0) -> Prompt:
    if family == "qwen2_audio":
        return _audio_prompt(AUDIO_CARRIER + " " + text, seed)
    return _image_prompt(IMAGE_CARRIER + " " + text, seed)


FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3", "smolvlm", "idefics3", "qwen2_audio"]  # omni: test_omni.py


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_output_hidden_states_and_batching(tiny_model_dir, family):
    """Hook capture == output_hidden_states (raw layer outputs) and batched == unbatched, per family."""
    lm = load_model(str(tiny_model_dir(family)), device="cpu")
    assert lm.num_layers == 3 and lm.hidden_size == 64
    prompts = [_prompt(family, t, i) for i, t in enumerate(TEXTS)] + [Prompt(text=TEXTS[0])]
    inputs = lm.encode([prompts[0]])
    backend = lm.backend(prompts[0].modality)
    with torch.no_grad(), record_layers(lm) as record:
        out = backend.model(**inputs, output_hidden_states=True, use_cache=False)
    hooked = record.last_token(inputs["attention_mask"])[0]
    # hidden_states[l + 1] is layer l's output, except the last, which transformers returns after the final norm
    for layer in range(lm.num_layers - 1):
        torch.testing.assert_close(hooked[layer], out.hidden_states[layer + 1][0, -1], rtol=0, atol=0)
    final_norm = backend.model.get_decoder().norm
    torch.testing.assert_close(final_norm(hooked[-1]), out.hidden_states[-1][0, -1], rtol=1e-5, atol=1e-5)

    hooks_before = [dict(layer._forward_hooks) for layer in lm.layers]
    media = prompts[:3]
    batched = capture_prompts(lm, media, CaptureSettings(batch_size=3))
    single = torch.cat([capture_prompts(lm, [p], CaptureSettings(batch_size=1)) for p in media])
    assert batched.shape == (3, 3, 64)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    assert [dict(layer._forward_hooks) for layer in lm.layers] == hooks_before


def test_template_mean_pooling_averages_trailing_tokens(tiny_llava):
    prompt = Prompt(text=TEXTS[0])
    n = tiny_llava.trailing_template_tokens("text")
    assert n == len(tiny_llava.backend("text").tokenizer("<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    inputs = tiny_llava.encode([prompt])
    with torch.no_grad(), record_layers(tiny_llava) as record:
        tiny_llava.backend("text").model(**inputs, use_cache=False)
    expected = torch.stack([o[0, -n:].mean(0) for o in record.outputs])
    pooled = capture_prompts(tiny_llava, [prompt], CaptureSettings(pooling="template_mean"))[0]
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)


def test_hooks_removed_after_exception(tiny_llava):
    before = [len(layer._forward_hooks) for layer in tiny_llava.layers]
    with pytest.raises(RuntimeError, match="boom"):
        with record_layers(tiny_llava), corrected(tiny_llava, {1: torch.ones(64)}, 1.0):
            assert [len(layer._forward_hooks) for layer in tiny_llava.layers] == [
                n + 1 + (i == 1) for i, n in enumerate(before)
            ]
            raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in tiny_llava.layers] == before


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
        proj_means={"text/harmful": torch.ones(L), "text/harmless": torch.zeros(L)},
        metrics={"auroc": {"text": [1.0] * L, "image": [0.6, 0.5, 0.9]}},
    )


def test_patched_layer_equals_original_minus_vector_and_earlier_layers_unchanged(tiny_llava):
    prompt = _image_prompt(IMAGE_CARRIER)
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
    prompt = _image_prompt(IMAGE_CARRIER + " " + TEXTS[0])
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


def test_window_uses_increments_and_cmrm_does_not(tiny_llava):
    profile = _profile_for(tiny_llava)
    drift = profile.drifts["image"]
    fixed = correction_vectors(profile, "image", "fixed", (0, 1, 2))
    torch.testing.assert_close(sum(fixed.values()), drift[2])
    torch.testing.assert_close(fixed[1], drift[1] - drift[0])
    cmrm = correction_vectors(profile, "image", "cmrm", (0, 1))
    torch.testing.assert_close(cmrm[1], drift[1])
    shift = correction_vectors(profile, "image", "shiftdc", (1,))[1]
    unit = profile.unit_dirs[1]
    torch.testing.assert_close(shift, (drift[1] @ unit) * unit, rtol=1e-5, atol=1e-5)
    assert correction_vectors(profile, "text", "fixed", (1,)) == {}


def test_adaptive_exposes_score_and_alpha(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompt = _image_prompt(IMAGE_CARRIER + " " + TEXTS[1])
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
    prompt = _image_prompt(IMAGE_CARRIER + " " + TEXTS[1])
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


def test_concurrent_steered_and_plain_threads_match_sequential(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompt = _image_prompt(IMAGE_CARRIER + " " + TEXTS[2])
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


def test_clear_errors(tmp_path, tiny_model_dir, tiny_llava):
    with pytest.raises(ModelLoadError, match="Supported families: .*llava"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="no model given"):
        load_model("  ")
    with pytest.raises(ModelLoadError, match="does not accept audio"):
        tiny_llava.encode([_audio_prompt(AUDIO_CARRIER)])
    # a model whose processor and tokenizer have no chat template
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir("llava"), bare)
    for name in ("chat_template.jinja", "chat_template.json"):
        (bare / name).unlink(missing_ok=True)
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = bare / name
        if path.exists():
            import json

            data = json.loads(path.read_text())
            data.pop("chat_template", None)
            path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_model(str(bare), device="cpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        CorrectionConfig(mode="bogus")  # type: ignore[arg-type]


def test_capture_corrected_per_row_alpha_matches_one_by_one(tiny_llava):
    from explorer.regap import self_rectification_score

    profile = _profile_for(tiny_llava)
    prompts = [_image_prompt(IMAGE_CARRIER + " " + t, i) for i, t in enumerate(TEXTS)]
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


def test_demo_strengths_come_only_from_a_summary_of_the_same_weights(tmp_path):
    import json

    from explorer.models import _chosen_strengths

    path = tmp_path / "eval_summary.json"
    assert _chosen_strengths(path, "rev") == {}  # no summary
    path.write_text("{not json")
    assert _chosen_strengths(path, "rev") == {}
    summary = {"revision": "rev", "regap": {"strength_choice": {"per_modality": {"image": 2.0, "audio": 1}}}}
    path.write_text(json.dumps(summary))
    assert _chosen_strengths(path, "rev") == {"image": 2.0, "audio": 1.0}
    assert _chosen_strengths(path, "other weights") == {}
    path.write_text(json.dumps({"revision": "rev", "regap": {"strength": 1.0}}))  # a run without --strength auto
    assert _chosen_strengths(path, "rev") == {}
