"""Engine on a tiny random-weight Qwen2.5-Omni (thinker only): text, image and audio input in one model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.correction.generation import generate
from explorer.correction.regap import CorrectionConfig
from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER, Prompt
from explorer.model.capture import CaptureSettings, capture_prompts, record_layers
from explorer.model.loading import load_model

TEXTS = ["Explain how to bake bread at home.", "Write a poem.", "How do I kill a Python process that hangs?"]
MODALITIES = ["text", "image", "audio"]


@pytest.fixture(scope="module")
def omni(tiny_model_dir):
    return load_model(str(tiny_model_dir("qwen2_5_omni")), device="cpu")


def _image(seed: int, size: tuple[int, int] = (40, 56)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _audio(seed: int, seconds: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)


def _prompt(modality: str, text: str, seed: int = 0) -> Prompt:
    if modality == "image":
        return Prompt(text=IMAGE_CARRIER + " " + text, image=_image(seed), modality="image")
    if modality == "audio":
        return Prompt(text=AUDIO_CARRIER + " " + text, audio=_audio(seed), modality="audio")
    return Prompt(text=text)


def test_loads_thinker_with_all_three_modalities(omni):
    assert omni.modalities == ("text", "image", "audio")
    assert omni.num_layers == 3 and omni.hidden_size == 64
    model = omni.backend("audio").model
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert all(omni.backend(m).model is model for m in MODALITIES)  # one model, one set of layers and hooks
    assert not hasattr(model, "talker")


@pytest.mark.parametrize("modality", MODALITIES)
def test_prompt_carries_the_modality_placeholders(omni, modality):
    inputs = omni.encode([_prompt(modality, TEXTS[0])])
    ids = inputs["input_ids"][0].tolist()
    tok = omni.backend(modality).tokenizer
    count = {name: ids.count(tok.convert_tokens_to_ids(name)) for name in ("<|IMAGE|>", "<|AUDIO|>")}
    if modality == "image":
        grid = inputs["image_grid_thw"][0]
        assert count == {"<|IMAGE|>": int(grid.prod()) // 4, "<|AUDIO|>": 0}
    elif modality == "audio":
        assert count == {"<|IMAGE|>": 0, "<|AUDIO|>": 25}  # 1 s = 100 mel frames → /2 conv → /2 pool
    else:
        assert count == {"<|IMAGE|>": 0, "<|AUDIO|>": 0}


@pytest.mark.parametrize("modality", MODALITIES)
def test_capture_equals_output_hidden_states(omni, modality):
    """Hook capture == output_hidden_states (raw layer outputs) at the last prompt token."""
    inputs = omni.encode([_prompt(modality, TEXTS[0])])
    backend = omni.backend(modality)
    with torch.no_grad(), record_layers(omni) as record:
        out = backend.model(**inputs, output_hidden_states=True, use_cache=False)
    hooked = record.last_token(inputs["attention_mask"])[0]
    assert hooked.shape == (3, 64) and len(out.hidden_states) == omni.num_layers + 1
    for layer in range(omni.num_layers - 1):
        torch.testing.assert_close(hooked[layer], out.hidden_states[layer + 1][0, -1], rtol=0, atol=0)
    # the last entry of hidden_states comes after the final norm
    final_norm = backend.model.get_decoder().norm
    torch.testing.assert_close(final_norm(hooked[-1]), out.hidden_states[-1][0, -1], rtol=1e-5, atol=1e-5)


def _batch(modality: str) -> list[Prompt]:
    """Three prompts of different lengths (text, image size, audio length), so batching pads rows."""
    prompts = [_prompt(modality, t, i) for i, t in enumerate(TEXTS)]
    if modality == "image":
        prompts[1] = Prompt(text=prompts[1].text, image=_image(1, (84, 112)), modality="image")
    if modality == "audio":
        prompts[1] = Prompt(text=prompts[1].text, audio=_audio(1, 0.6), modality="audio")
    return prompts


@pytest.mark.parametrize("modality", MODALITIES)
def test_batched_capture_equals_unbatched(omni, modality):
    prompts = _batch(modality)
    hooks_before = [dict(layer._forward_hooks) for layer in omni.layers]
    batched = capture_prompts(omni, prompts, CaptureSettings(batch_size=3))
    single = torch.cat([capture_prompts(omni, [p], CaptureSettings(batch_size=1)) for p in prompts])
    assert batched.shape == (3, 3, 64)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    assert [dict(layer._forward_hooks) for layer in omni.layers] == hooks_before
    assert not torch.allclose(single[0], single[2])  # different prompts, different states


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_generate_without_correction(omni, modality):
    prompt = _prompt(modality, TEXTS[1])
    result = generate(omni, prompt, None, CorrectionConfig(mode="off"), max_new_tokens=6)
    assert len(result.token_ids) == 6 and result.modality == modality and result.alpha == 0.0
    again = generate(omni, prompt, None, CorrectionConfig(mode="off"), max_new_tokens=6)
    assert again.token_ids == result.token_ids  # greedy decoding is deterministic


def test_a_short_window_gives_the_whole_windows_real_frames_bit_for_bit(omni):
    """Omni's processor pads every clip to 300 s; the engine pads to the longest clip plus one STFT window
    (models.masked_audio_length). Each clip length at the rounding's edges alone: its real frames' features are
    the whole window's exactly; and a batch of them gives the whole window's hidden states exactly."""
    from explorer.model.models import masked_audio_length

    processor = omni.backend("audio").processor
    features = processor.feature_extractor
    rate, n_fft, hop = features.sampling_rate, features.n_fft, features.hop_length
    lengths = [rate - n_fft, rate - n_fft + 1, rate, 3 * rate - n_fft - 1, 1600]
    assert [masked_audio_length(features, n) for n in lengths] == [rate, 2 * rate, 2 * rate, 3 * rate, rate]
    assert masked_audio_length(features, features.n_samples) == features.n_samples  # never past the window
    prompts = [Prompt(text=AUDIO_CARRIER + " " + TEXTS[0], audio=_audio(i, n / rate), modality="audio")
               for i, n in enumerate(lengths)]

    def whole_window(batch: list[Prompt]) -> dict:
        return processor(text=[omni.chat_text(p) for p in batch], audio=[p.audio for p in batch],
                         sampling_rate=rate, return_tensors="pt", padding=True, padding_side="right")

    for prompt in prompts:
        whole, short = whole_window([prompt]), omni.encode([prompt])
        frames = short["input_features"].shape[-1]
        assert frames == masked_audio_length(features, len(prompt.audio)) // hop
        assert whole["input_features"].shape[-1] == features.n_samples // hop
        assert whole["feature_attention_mask"][:, frames:].sum() == 0
        assert torch.equal(whole["feature_attention_mask"][:, :frames], short["feature_attention_mask"])
        real = short["feature_attention_mask"].bool()
        assert torch.equal(whole["input_features"][:, :, :frames].permute(0, 2, 1)[real],
                           short["input_features"].permute(0, 2, 1)[real])
    model = omni.backend("audio").model
    with torch.no_grad():
        states = [model(**inputs, output_hidden_states=True, use_cache=False).hidden_states
                  for inputs in (whole_window(prompts), omni.encode(prompts))]
    for layer_whole, layer_short in zip(*states):
        torch.testing.assert_close(layer_whole, layer_short, rtol=0, atol=0)
