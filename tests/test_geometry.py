"""Tests for explorer.geometry.formulas: every formula of docs/method.md on synthetic data with a known answer."""

from __future__ import annotations

import pytest
import torch
from planted import (
    HARMFUL_IDS,
    HARMLESS_IDS,
    N_PER_LABEL,
    U_HAT,
    U_NORMS,
    V_HAT,
    D,
    L,
    U,
    state_batch,
    text_states,
    unit,
)

from explorer.geometry.formulas import (
    auroc_per_layer,
    modality_drift,
    normalised_score,
    project,
    refusal_directions,
    refusal_gap,
    translation_ceiling,
    unit_directions,
)
from explorer.geometry.profile import build_profile
from explorer.model.states import StateBatch


@pytest.fixture()
def text_batch() -> StateBatch:
    return state_batch(*text_states(), "text")


def test_refusal_direction_recovers_planted_direction(text_batch: StateBatch) -> None:
    r = refusal_directions(text_batch)
    assert r.shape == (L, D) and r.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(r.double(), U, dim=-1)
    assert bool((cos > 0.999).all())
    torch.testing.assert_close(r.double(), 4 * U, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit_directions(r).double().norm(dim=-1), torch.ones(L, dtype=torch.float64))


def test_refusal_direction_ignores_non_text_items(text_batch: StateBatch) -> None:
    harmful, harmless = text_states()
    image = state_batch(harmful - 10 * U, harmless + 10 * U, "image")  # would flip r if it were used
    torch.testing.assert_close(refusal_directions(text_batch.concat(image)), refusal_directions(text_batch))


def test_refusal_direction_needs_both_text_labels(text_batch: StateBatch) -> None:
    with pytest.raises(ValueError, match="no text/harmless"):
        refusal_directions(text_batch.select(label="harmful"))
    with pytest.raises(ValueError, match="no text/harmful"):
        refusal_directions(text_batch.select(label="harmless").concat(
            state_batch(*text_states(), "image")))  # fmt: skip


def test_gap_equals_planted_and_auroc_is_one(text_batch: StateBatch) -> None:
    proj = project(text_batch.states, unit_directions(refusal_directions(text_batch)))
    assert proj.shape == (2 * N_PER_LABEL, L)
    assert refusal_gap(proj, text_batch.labels) == pytest.approx([4 * n for n in U_NORMS], rel=1e-5)
    assert auroc_per_layer(proj, text_batch.labels) == [1.0] * L


def test_project_matches_dot_product_and_rejects_unnormalised_dirs() -> None:
    g = torch.Generator().manual_seed(3)
    states = torch.randn(5, L, D, generator=g)
    dirs = unit(torch.randn(L, D, generator=g))
    expected = torch.einsum("nld,ld->nl", states.double(), dirs.double()).float()
    torch.testing.assert_close(project(states, dirs), expected)
    torch.testing.assert_close(project(states[0], dirs), expected[0])  # one item [L, d] -> [L]
    with pytest.raises(ValueError, match="unit norm"):
        project(states, 2 * dirs)
    with pytest.raises(ValueError, match="must end with"):
        project(states, dirs[:, :4])


def test_auroc_and_gap_on_hand_made_example() -> None:
    # Harmful (positive) scores 0.35, 0.8; harmless 0.1, 0.4: 3 of 4 (pos, neg) pairs ordered -> 0.75.
    proj = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    labels = ["harmless", "harmless", "harmful", "harmful"]
    assert auroc_per_layer(proj, labels) == [pytest.approx(0.75, abs=1e-12)]
    assert refusal_gap(proj, labels) == [pytest.approx((0.35 + 0.8) / 2 - (0.1 + 0.4) / 2, abs=1e-7)]
    # Reversing the scores makes harmless look harmful: AUROC 1 - 0.75.
    assert auroc_per_layer(-proj, labels) == [pytest.approx(0.25, abs=1e-12)]


def test_translation_ceiling_on_hand_made_example() -> None:
    """Layer 0: harmful 3, 2, 1, 0.5 vs harmless 1.5, 0, -1, -2. With no over-refusal allowed the best threshold
    sits above 1.5 (2 of 4 harmful); allowing 2 of 4 harmless (b = 0.5) it sits below 0 (all harmful).
    Layer 1 (harmful -3, -2, -1, -0.5): nothing at b = 0; only -0.5 above a threshold in (-1, 0) at b = 0.5.
    A shift of every item leaves it unchanged: that is why it bounds a translation."""
    harmful = torch.tensor([[3.0, -3.0], [2.0, -2.0], [1.0, -1.0], [0.5, -0.5]])
    harmless = torch.tensor([[1.5, 1.5], [0.0, 0.0], [-1.0, -1.0], [-2.0, -2.0]])
    proj = torch.cat([harmful, harmless])
    labels = ["harmful"] * 4 + ["harmless"] * 4
    assert translation_ceiling(proj, labels, 0.0) == [0.5, 0.0]
    assert translation_ceiling(proj, labels, 0.5) == [1.0, 0.25]
    assert translation_ceiling(proj + 7.0, labels, 0.5) == [1.0, 0.25]
    assert translation_ceiling(proj, labels, 1.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        translation_ceiling(proj, labels, 1.5)


def test_auroc_and_gap_raise_on_missing_class() -> None:
    proj = torch.tensor([[0.1], [0.4]])
    with pytest.raises(ValueError, match="no harmless"):
        auroc_per_layer(proj, ["harmful", "harmful"])
    with pytest.raises(ValueError, match="no harmful"):
        refusal_gap(proj, ["harmless", "harmless"])
    with pytest.raises(ValueError, match="3 labels for 2"):
        refusal_gap(proj, ["harmless", "harmful", "harmful"])


def test_modality_drift_pairs_items_by_id() -> None:
    harmful, harmless = text_states()
    text = state_batch(harmful, harmless, "text")
    w = 3 * U_HAT + 4 * V_HAT  # ||w|| = 5, cos(w, r) = 3/5 at every layer
    # Unbalanced, shuffled subset of the text items (4 harmful, 6 harmless) plus an image-only item:
    # an unpaired text mean would be base + u, the paired one base + 0.6 u, so pairing matters.
    order_h, order_s = [2, 0, 3, 1], [5, 1, 0, 4, 2, 3]
    image = state_batch(harmful[order_h] + w, harmless[order_s] + w, "image",
                   ([HARMFUL_IDS[i] for i in order_h], [HARMLESS_IDS[i] for i in order_s]))  # fmt: skip
    extra = state_batch(harmful[:1] + 100.0, harmless[:1], "image", (["only-image"], ["only-image-2"]))
    batch = text.concat(image).concat(extra)
    torch.testing.assert_close(modality_drift(batch, "image").double(), w, rtol=1e-5, atol=1e-5)
    assert torch.equal(modality_drift(batch, "text"), torch.zeros(L, D))

    profile = build_profile(batch, "m", "h", {})
    assert profile.metrics["drift_norm"]["image"] == pytest.approx([5.0] * L, rel=1e-5)
    assert profile.metrics["cos_drift_refusal"]["image"] == pytest.approx([0.6] * L, abs=1e-5)
    torch.testing.assert_close(profile.drifts["image"].double(), w, rtol=1e-5, atol=1e-5)


def test_modality_drift_needs_shared_ids() -> None:
    harmful, harmless = text_states()
    batch = state_batch(harmful, harmless, "text").concat(
        state_batch(harmful, harmless, "audio", ([f"x{i}" for i in range(8)], [f"y{i}" for i in range(8)])))  # fmt: skip
    with pytest.raises(ValueError, match="no item id occurs both as text and as audio"):
        modality_drift(batch, "audio")


def test_cos_refusal_within_hand_computed() -> None:
    harmful, harmless = text_states()
    z = 3 * U.norm(dim=-1, keepdim=True) * V_HAT  # ⟂ r = 4u with ||z|| = 3||u|| -> r^m = r + z
    batch = state_batch(harmful, harmless, "text").concat(state_batch(harmful + z, harmless, "audio"))
    profile = build_profile(batch, "m", "h", {})
    assert profile.metrics["cos_refusal_within"]["audio"] == pytest.approx([0.8] * L, abs=1e-5)  # 4/5
    # z is orthogonal to the axis: the gap along r̂ is unchanged, and the drift is z/2.
    assert profile.metrics["collapse_ratio"]["audio"] == pytest.approx([1.0] * L, abs=1e-5)
    torch.testing.assert_close(profile.drifts["audio"].double(), z / 2, rtol=1e-5, atol=1e-5)


def test_normalised_score_hand_computed() -> None:
    proj = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
    lo, hi = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 5.0])
    torch.testing.assert_close(normalised_score(proj, lo, hi), torch.tensor([[0.5, 0.25], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="undefined"):
        normalised_score(proj, lo, lo)


def test_accuracy_at_the_text_threshold_sees_a_shift_auroc_does_not():
    from explorer.geometry.formulas import accuracy_at_threshold, auroc_per_layer

    scores = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.6, 0.7], [0.4, 0.3]])
    labels = ["harmful", "harmless", "harmful", "harmless"]
    assert accuracy_at_threshold(scores, labels) == [1.0, 0.5]
    shifted = scores - 0.45  # a drift moving every item down the axis: the order (AUROC) is kept
    assert auroc_per_layer(shifted, labels) == auroc_per_layer(scores, labels)
    assert accuracy_at_threshold(shifted, labels) == [0.5, 0.5]  # every item now under the text threshold
