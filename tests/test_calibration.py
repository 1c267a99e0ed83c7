"""Tests for explorer.evaluation.calibration: the gate threshold of `--threshold auto` and the cache of corrected
calibration states."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def test_choose_threshold_is_halfway_between_the_mean_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """τ per modality = the midpoint of the mean s(x) of the calibration split's harmful and harmless inputs of that
    modality (scored with the config it is given), applied per modality; text is never scored."""
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation import calibration
    from explorer.evaluation.calibration import choose_threshold
    from explorer.inputs.data import Instruction

    items = [Instruction(f"{lab}-{i}", f"request {i}", lab, "c", "calibration") for lab in ("harmful", "harmless")
             for i in range(5)]
    scored = []  # (modality, labels, probe strength) of every call, so nothing is scored twice or as text
    # harmful images 0.4..0.8 (mean 0.6), harmless images mean 0.0 with two above the lowest harmful one (2 of 25
    # pairs out of order: AUROC 0.92); audio harmful 0.3, harmless -0.1 (apart: AUROC 1)
    table = {("image", "harmful"): [0.4, 0.5, 0.6, 0.7, 0.8], ("image", "harmless"): [-0.5, -0.4, 0.0, 0.45, 0.45],
             ("audio", "harmful"): [0.3] * 5, ("audio", "harmless"): [-0.1] * 5}

    def scores(_model, prompts, _profile, config, _settings):  # type: ignore[no-untyped-def]
        labels = {p.label for p in prompts}
        assert len(labels) == 1 and len({p.modality for p in prompts}) == 1
        scored.append((prompts[0].modality, labels.pop(), config.probe_strength))
        return table[(prompts[0].modality, prompts[0].label)][: len(prompts)]

    class ScriptedModel:
        def render(self, item: Instruction, modality: str) -> SimpleNamespace:
            return SimpleNamespace(label=item.label, modality=modality)

    monkeypatch.setattr(calibration, "self_rectification_scores", scores)
    config = CorrectionConfig(mode="adaptive", probe_strength=1.0)
    choice = choose_threshold(ScriptedModel(), items, None, config, ["text", "image", "audio"])  # type: ignore[arg-type]
    assert sorted(scored) == [("audio", "harmful", 1.0), ("audio", "harmless", 1.0), ("image", "harmful", 1.0),
                              ("image", "harmless", 1.0)]
    assert choice.per_modality == pytest.approx({"image": 0.3, "audio": 0.1})
    assert choice.mean_scores == pytest.approx({"image/harmful": 0.6, "image/harmless": 0.0, "audio/harmful": 0.3,
                                                "audio/harmless": -0.1})
    assert choice.counts == {"image/harmful": 5, "image/harmless": 5, "audio/harmful": 5, "audio/harmless": 5}
    assert choice.separation == pytest.approx({"image": 0.92, "audio": 1.0})
    applied = choice.apply(CorrectionConfig(mode="adaptive", threshold=0.5))
    assert applied.for_modality("image").threshold == pytest.approx(0.3)
    assert applied.for_modality("audio").threshold == pytest.approx(0.1)
    assert applied.for_modality("video").threshold == 0.5  # the plain τ stays the fallback
    with pytest.raises(ValueError, match="image/audio"):
        choose_threshold(ScriptedModel(), items, None, config, ["text"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no harmless calibration items"):
        choose_threshold(ScriptedModel(), items[:5], None, config, ["image"])  # type: ignore[arg-type]


def test_corrected_calibration_is_read_back_from_disk(tiny_llava, tiny_calibration, tmp_path, monkeypatch) -> None:
    """The app's first Analyse of a setting re-captures every media calibration item under the correction; a
    second start reads the same states from the disk cache instead, keyed by the whole correction."""
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation import calibration
    from explorer.evaluation.calibration import (
        corrected_calibration,
    )

    cal = tiny_calibration
    config = CorrectionConfig(mode="adaptive", strength=1.5).resolved(cal.profile)
    first = corrected_calibration(tiny_llava, cal, config, cache_dir=tmp_path)
    assert first is not None and first.modalities == ["image"] * 6 and first.item_ids == [i.id for i in cal.items]
    monkeypatch.setattr(calibration, "capture_corrected", lambda *a, **k: pytest.fail("recaptured a cached setting"))
    torch.testing.assert_close(corrected_calibration(tiny_llava, cal, config, cache_dir=tmp_path).states,
                               first.states)
    other = CorrectionConfig(mode="fixed", strength=1.5).resolved(cal.profile)
    with pytest.raises(pytest.fail.Exception):
        corrected_calibration(tiny_llava, cal, other, cache_dir=tmp_path)  # another setting is not a cache hit
    assert corrected_calibration(tiny_llava, cal, CorrectionConfig(mode="off"), cache_dir=tmp_path) is None
