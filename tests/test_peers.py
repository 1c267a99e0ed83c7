"""The peers as published (explorer.correction.peers, docs/method.md formulas 12–14), with known answers on a tiny model:
ShiftDC removes each input's own shift along the refusal axis exactly, at the last prompt token of the prompt pass
only; CMRM maps a blank-medium input back onto its text-only state."""

from __future__ import annotations

import pytest
import torch
from noise_prompts import TEXTS, image_prompt
from test_regap import _profile_for

from explorer.correction.peers import (
    blank_prompt,
    blank_shifts,
    counterpart_prompts,
    sample_vectors,
    shiftdc_layers,
)
from explorer.correction.regap import CorrectionConfig, capture_corrected, corrected
from explorer.inputs.media import IMAGE_CARRIER, Prompt
from explorer.model.capture import CaptureSettings, capture_prompts, record_layers


def test_shiftdc_removes_each_inputs_own_shift_along_the_refusal_axis_exactly(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompts = [image_prompt(IMAGE_CARRIER, seed=i, request=TEXTS[i]) for i in range(3)]
    layer = 1
    media = capture_prompts(tiny_llava, prompts)[:, layer].double()
    text = capture_prompts(tiny_llava, counterpart_prompts(tiny_llava, prompts))[:, layer].double()
    unit = profile.unit_dirs[layer].double()
    along = (media - text) @ unit
    assert float(along.max() - along.min()) > 1e-3  # each input has its own shift: one mean vector cannot fit all
    got = capture_corrected(tiny_llava, prompts, profile, CorrectionConfig(mode="shiftdc", strength=1.0,
                                                                            layers=(layer,)),
                            CaptureSettings(batch_size=3)).states[:, layer].double()
    # along the axis each row now sits exactly where its own text counterpart sits …
    torch.testing.assert_close(got @ unit, text @ unit, rtol=0, atol=1e-4)
    # … and nothing orthogonal to the axis moved
    def orthogonal(x: torch.Tensor) -> torch.Tensor:
        return x - (x @ unit)[:, None] * unit

    torch.testing.assert_close(orthogonal(got), orthogonal(media), rtol=0, atol=1e-4)


def test_shiftdc_corrects_only_the_last_prompt_token_and_not_generated_tokens(tiny_llava):
    profile = _profile_for(tiny_llava)
    prompts = [image_prompt(IMAGE_CARRIER, seed=0), image_prompt(IMAGE_CARRIER + " Please, now.", seed=1)]
    vectors = sample_vectors(tiny_llava, prompts, profile, "shiftdc", (1,))
    assert vectors[1].shape == (2, tiny_llava.hidden_size)
    inputs = tiny_llava.encode(prompts, padding_side="left")
    model = tiny_llava.backend("image").model
    with torch.no_grad():
        with record_layers(tiny_llava) as base:
            model(**inputs, use_cache=False)
        with corrected(tiny_llava, vectors, 1.0, "last_prompt"), record_layers(tiny_llava) as steered:
            model(**inputs, use_cache=False)
        before, after = base.outputs[1], steered.outputs[1]
        torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=0, atol=0)
        torch.testing.assert_close(after[:, -1], before[:, -1] - vectors[1], rtol=1e-5, atol=1e-5)
        one_token = {"input_ids": inputs["input_ids"][:, -1:]}  # the shape of a cached decoding step
        with record_layers(tiny_llava) as plain:
            tiny_llava.backend("text").model(**one_token, use_cache=False)
        with corrected(tiny_llava, vectors, 1.0, "last_prompt"), record_layers(tiny_llava) as decoded:
            tiny_llava.backend("text").model(**one_token, use_cache=False)
    torch.testing.assert_close(decoded.outputs[1], plain.outputs[1], rtol=0, atol=0)


def test_peer_modes_default_to_their_own_layers(tiny_llava):
    profile = _profile_for(tiny_llava)
    L = tiny_llava.num_layers
    assert CorrectionConfig(mode="shiftdc").resolved(profile).layers == shiftdc_layers(L) == tuple(range(L // 2, L))
    assert CorrectionConfig(mode="cmrm").resolved(profile).layers == tuple(range(L))
    assert CorrectionConfig(mode="cmrm_sample").resolved(profile).layers == tuple(range(L))
    assert CorrectionConfig(mode="shiftdc", layers=(0,)).resolved(profile).layers == (0,)


def test_cmrm_sample_maps_a_blank_medium_input_onto_its_text_only_state(tiny_llava):
    profile = _profile_for(tiny_llava)
    text = TEXTS[0]
    blank = blank_prompt(tiny_llava, text, "image")
    vectors = sample_vectors(tiny_llava, [blank], profile, "cmrm_sample", (0,))
    expected = (capture_prompts(tiny_llava, [blank]) - capture_prompts(tiny_llava, [tiny_llava.render(text, "text")]))
    torch.testing.assert_close(vectors[0][0], expected[0, 0], rtol=1e-5, atol=1e-5)
    got = capture_corrected(tiny_llava, [blank], profile, CorrectionConfig(mode="cmrm_sample", strength=1.0,
                                                                            layers=(0,))).states
    alone = capture_prompts(tiny_llava, [tiny_llava.render(text, "text")])
    torch.testing.assert_close(got[0, 0], alone[0, 0], rtol=1e-4, atol=1e-4)
    # the sample-level vector reads the prompt's text, not its medium: another image, the same vector
    other = sample_vectors(tiny_llava, [image_prompt(text, seed=2)], profile, "cmrm_sample", (0,))
    torch.testing.assert_close(other[0], vectors[0], rtol=1e-5, atol=1e-5)


def test_calibration_stores_cmrms_dataset_shift_and_the_profile_keeps_it(tiny_llava, tmp_path):
    from explorer.evaluation.calibration import calibrate, load_calibration_items
    from explorer.geometry.profile import Profile

    items = load_calibration_items("builtin", limit=2)
    profile = calibrate(tiny_llava, items, ["text", "image"], cache_dir=tmp_path).profile
    carrier = tiny_llava.render(items[0], "image").text
    expected = blank_shifts(tiny_llava, [carrier], "image")[0].float()
    torch.testing.assert_close(profile.blank_shifts["image"], expected, rtol=1e-5, atol=1e-5)
    profile.save(tmp_path / "p")
    torch.testing.assert_close(Profile.load(tmp_path / "p").blank_shifts["image"], profile.blank_shifts["image"])


def test_shiftdc_without_the_request_text_says_what_is_missing(tiny_llava):
    profile = _profile_for(tiny_llava)
    upload = Prompt(text=IMAGE_CARRIER, image=image_prompt("x").image, modality="image")
    with pytest.raises(ValueError, match="no request text"):
        capture_corrected(tiny_llava, [upload], profile, CorrectionConfig(mode="shiftdc"))


def test_shiftdc_counterpart_keeps_the_prompt_text_and_swaps_the_medium_for_its_content(tiny_llava):
    """As ShiftDC keeps the query and puts a caption where the image was, the counterpart keeps the carrier (or a
    benchmark's jailbreak text): the removed shift is the medium's, not the text's."""
    from noise_prompts import audio_prompt

    image, audio = image_prompt("Read this.", request=TEXTS[1]), audio_prompt("Listen.", request=TEXTS[2])
    got = [p.text for p in counterpart_prompts(tiny_llava, [image, audio])]
    assert got == [f"Read this. Image caption: {TEXTS[1]}", f"Listen. Audio transcript: {TEXTS[2]}"]
    assert all(p.modality == "text" for p in counterpart_prompts(tiny_llava, [image]))
