"""Tests for explorer.model.capture on a tiny twin of every family: captured states == output_hidden_states, batched == unbatched."""

from __future__ import annotations

import pytest
import torch
from noise_prompts import TEXTS, audio_prompt, image_prompt

from explorer.correction.regap import corrected
from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER, Prompt
from explorer.model.capture import CaptureSettings, capture_prompts, record_layers
from explorer.model.loading import load_model


def _prompt(family: str, text: str, seed: int = 0) -> Prompt:
    if family == "qwen2_audio":
        return audio_prompt(AUDIO_CARRIER + " " + text, seed)
    return image_prompt(IMAGE_CARRIER + " " + text, seed)


FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3", "smolvlm", "idefics3", "qwen2_audio",
            "sge_reading_lm"]  # omni: test_capture_omni.py


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


def test_damaged_state_cache_files_are_recomputed_not_read(tiny_llava, tmp_path):
    """A truncated file, a garbled one and one of the wrong shape are each detected, recomputed and rewritten:
    the states equal a run with no cache at all."""
    from explorer.inputs.data import load_builtin
    from explorer.model.capture import capture_items

    items = load_builtin("calibration")[:4]
    fresh = capture_items(tiny_llava, items, "text", cache_dir=None).states
    capture_items(tiny_llava, items, "text", cache_dir=tmp_path)
    files = sorted((tmp_path / "states").rglob("*.safetensors"))
    assert len(files) == 4
    files[0].write_bytes(files[0].read_bytes()[:40])  # cut by a crash
    files[1].write_bytes(b"\x00" * 200)  # garbage
    from safetensors.torch import save_file

    save_file({"states": torch.zeros(2, 2)}, str(files[2]))  # a file of another shape
    again = capture_items(tiny_llava, items, "text", cache_dir=tmp_path).states
    torch.testing.assert_close(again, fresh)
    assert all(f.stat().st_size > 200 for f in files[:3])  # rewritten whole
    third = capture_items(tiny_llava, items, "text", cache_dir=tmp_path).states
    torch.testing.assert_close(third, fresh)


def test_cache_key_holds_dtype_and_device(tiny_llava, tmp_path):
    from dataclasses import replace

    from explorer.model.capture import CaptureSettings, _cache_path

    prompt = tiny_llava.render("Write a poem.", "text")
    base = _cache_path(tiny_llava, prompt, CaptureSettings(), tmp_path)
    assert base == _cache_path(tiny_llava, prompt, CaptureSettings(), tmp_path)
    assert _cache_path(replace(tiny_llava, dtype=torch.bfloat16), prompt, CaptureSettings(), tmp_path) != base
    assert _cache_path(replace(tiny_llava, device=torch.device("cuda")), prompt, CaptureSettings(), tmp_path) != base
    assert _cache_path(replace(tiny_llava, revision="other"), prompt, CaptureSettings(), tmp_path) != base
    assert _cache_path(tiny_llava, prompt, CaptureSettings(pooling="template_mean"), tmp_path) != base


def test_capture_keeps_only_the_asked_positions_inside_the_hook(tiny_llava):
    """With `keep`, each layer's output is gathered in the hook: [batch, k, d] per layer is held, not the whole
    [batch, tokens, d], and the states equal the ones gathered from the whole output afterwards."""
    from explorer.model.capture import token_positions

    prompts = [image_prompt(IMAGE_CARRIER + extra, seed=i) for i, extra in enumerate(["", " Say more, please."])]
    inputs = tiny_llava.encode(prompts, padding_side="right")
    mask = inputs["attention_mask"]
    backend = tiny_llava.backend("image")
    with record_layers(tiny_llava) as whole:
        backend.model(**inputs, use_cache=False)
    with record_layers(tiny_llava, keep=token_positions(mask, 3)) as kept:
        backend.model(**inputs, use_cache=False)
    assert all(o.shape == (2, 3, tiny_llava.hidden_size) for o in kept.outputs)
    assert whole.outputs[0].shape[1] == mask.shape[1] > 3
    torch.testing.assert_close(kept.last_token(mask), whole.last_token(mask), rtol=0, atol=0)
    torch.testing.assert_close(kept.trailing_mean(mask, 3), whole.trailing_mean(mask, 3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="kept 3 positions"):
        kept.trailing_mean(mask, 4)
    positions = token_positions(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]), 2)
    assert positions.tolist() == [[1, 2], [2, 3]]  # right and left padding alike; the last column is the last token
