"""Tests for explorer.geometry.profile: a Profile built from planted geometry, saved, reloaded and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from planted import (
    N_PER_LABEL,
    U_NORMS,
    V_HAT,
    D,
    L,
    U,
    state_batch,
    text_states,
)

from explorer.geometry.formulas import (
    refusal_directions,
)
from explorer.geometry.profile import Profile, build_profile
from explorer.model.states import StateBatch


@pytest.fixture()
def text_batch() -> StateBatch:
    return state_batch(*text_states(), "text")


def _collapsed_batch(fraction: float, drift: torch.Tensor) -> StateBatch:
    """Text items plus image items = text items + drift, with image-harmful moved by ``fraction`` of the
    text refusal direction r = 4u towards harmless."""
    harmful, harmless = text_states()
    text = state_batch(harmful, harmless, "text")
    image = state_batch(harmful + drift - fraction * 4 * U, harmless + drift, "image")
    return text.concat(image)


@pytest.mark.parametrize(("fraction", "image_auroc"), [(0.0, 1.0), (0.7, 1.0), (1.5, 0.0)])
def test_collapse_ratio_equals_planted_fraction(fraction: float, image_auroc: float) -> None:
    w = 2 * V_HAT
    profile = build_profile(_collapsed_batch(fraction, w), "tiny", "abc", {"pooling": "last"})
    assert profile.modalities == ["text", "image"]
    assert profile.metrics["collapse_ratio"]["image"] == pytest.approx([1 - fraction] * L, abs=1e-5)
    assert profile.metrics["refusal_gap"]["text"] == pytest.approx([4 * n for n in U_NORMS], rel=1e-5)
    assert profile.metrics["refusal_gap"]["image"] == pytest.approx(
        [(1 - fraction) * 4 * n for n in U_NORMS], abs=1e-5)  # fmt: skip
    assert profile.metrics["auroc"] == {"text": [1.0] * L, "image": [image_auroc] * L}
    # Half the image items are harmful and moved by -fraction * 4u: drift = w - 2 * fraction * u.
    torch.testing.assert_close(profile.drifts["image"].double(), w - 2 * fraction * U, rtol=1e-5, atol=1e-5)
    # Formula 6: harmful image items sit at 1 - fraction on the text scale.
    image_harmful_mean = profile.means["image/harmful"]
    torch.testing.assert_close(profile.score(image_harmful_mean), torch.full((L,), 1 - fraction), atol=1e-5, rtol=0)


def test_profile_contents_and_score(text_batch: StateBatch) -> None:
    profile = build_profile(_collapsed_batch(0.5, V_HAT), "tiny", "abc", {"pooling": "last"})
    assert set(profile.means) == {"text/harmful", "text/harmless", "image/harmful", "image/harmless"}
    assert set(profile.proj_means) == set(profile.means) and set(profile.drifts) == {"image"}
    assert set(profile.metrics) == {"auroc", "refusal_gap", "collapse_ratio", "drift_norm", "cos_drift_refusal",
                                    "cos_refusal_within"}  # fmt: skip
    assert set(profile.metrics["collapse_ratio"]) == {"image"}
    assert set(profile.metrics["auroc"]) == {"text", "image"}
    torch.testing.assert_close(profile.refusal_dirs, refusal_directions(text_batch))
    # proj_means are the mean projections of each group.
    text_harmful = text_batch.select(label="harmful").states
    torch.testing.assert_close(profile.proj_means["text/harmful"], profile.project(text_harmful).mean(0), atol=1e-5, rtol=0)
    # Score: harmless text mean -> 0, harmful text mean -> 1 at every layer.
    torch.testing.assert_close(profile.score(profile.means["text/harmless"]), torch.zeros(L), atol=1e-5, rtol=0)
    torch.testing.assert_close(profile.score(profile.means["text/harmful"]), torch.ones(L), atol=1e-5, rtol=0)
    assert profile.score(text_harmful).shape == (N_PER_LABEL, L)
    assert profile.layer_index(-1) == L - 1
    with pytest.raises(ValueError, match="out of range"):
        profile.layer_index(L)


def test_build_profile_needs_both_labels_per_modality() -> None:
    harmful, harmless = text_states()
    batch = state_batch(harmful, harmless, "text").concat(state_batch(harmful, harmless[:0], "image"))
    with pytest.raises(ValueError, match="image items but none labelled 'harmless'"):
        build_profile(batch, "m", "h", {})


def test_profile_save_load_round_trip(tmp_path: Path) -> None:
    profile = build_profile(_collapsed_batch(0.3, V_HAT), "org/tiny-model", "deadbeef", {"pooling": "last", "n": 16})
    profile.save(tmp_path / "p")
    loaded = Profile.load(tmp_path / "p")
    assert (loaded.model_id, loaded.calibration_hash, loaded.num_layers, loaded.hidden_size) == (
        "org/tiny-model", "deadbeef", L, D)  # fmt: skip
    assert loaded.capture_settings == {"pooling": "last", "n": 16}
    assert torch.equal(loaded.refusal_dirs, profile.refusal_dirs)
    for name in ("means", "drifts", "proj_means"):
        original, restored = getattr(profile, name), getattr(loaded, name)
        assert set(original) == set(restored)
        assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.metrics == profile.metrics
    assert torch.equal(loaded.score(profile.means["image/harmful"]), profile.score(profile.means["image/harmful"]))


def test_profile_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing profile\.json, profile\.safetensors"):
        Profile.load(tmp_path / "nowhere")
    profile = build_profile(_collapsed_batch(0.3, V_HAT), "org/tiny-model", "deadbeef", {})
    profile.save(tmp_path / "p")
    meta_path = tmp_path / "p" / "profile.json"
    meta = json.loads(meta_path.read_text())
    meta["calibration_hash"] = "other"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="disagree on calibration_hash"):
        Profile.load(tmp_path / "p")
    (tmp_path / "p" / "profile.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing profile\.safetensors"):
        Profile.load(tmp_path / "p")


def test_profile_refuses_to_save_nan_or_bad_shapes(tmp_path: Path) -> None:
    profile = build_profile(_collapsed_batch(0.3, V_HAT), "m", "h", {})
    profile.drifts["image"] = profile.drifts["image"].clone()
    profile.drifts["image"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="drifts/image contains NaN"):
        profile.save(tmp_path / "p")
    profile.drifts["image"] = torch.zeros(L, D + 1)
    with pytest.raises(ValueError, match=r"drifts/image has shape \(3, 17\)"):
        profile.save(tmp_path / "p")
    assert not (tmp_path / "p").exists()
