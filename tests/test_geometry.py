"""Tests for explorer.geometry: every formula of docs/method.md on synthetic data with a known answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.embedding import embed_2d, warm_up_umap
from explorer.geometry import (
    auroc_per_layer,
    modality_drift,
    normalised_score,
    project,
    refusal_directions,
    refusal_gap,
    translation_ceiling,
    unit_directions,
)
from explorer.profile import Profile, build_profile
from explorer.states import StateBatch

L, D, N_PER_LABEL = 3, 16, 8
U_NORMS = (0.5, 1.0, 2.0)  # planted ||u_l|| per layer


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _orthonormal_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer unit vectors ``a_l ⟂ b_l`` ``[L, D]`` in float64."""
    g = torch.Generator().manual_seed(seed)
    a = _unit(torch.randn(L, D, generator=g, dtype=torch.float64))
    b = torch.randn(L, D, generator=g, dtype=torch.float64)
    b = _unit(b - (b * a).sum(-1, keepdim=True) * a)
    return a, b


U_HAT, V_HAT = _orthonormal_pair(1)  # planted refusal axis and an orthogonal axis
U = U_HAT * torch.tensor(U_NORMS, dtype=torch.float64)[:, None]  # [L, D]


def _text_states() -> tuple[torch.Tensor, torch.Tensor]:
    """(harmful, harmless) ``[N, L, D]`` float64: base + 3u and base − u plus noise centred per group,
    so the group means are exactly base + 3u and base − u."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(L, D, generator=g, dtype=torch.float64)
    groups = []
    for shift in (3.0, -1.0):
        noise = 0.01 * torch.randn(N_PER_LABEL, L, D, generator=g, dtype=torch.float64)
        noise -= noise.mean(dim=0)
        groups.append(base + shift * U + noise)
    return groups[0], groups[1]


HARMFUL_IDS = [f"h{i}" for i in range(N_PER_LABEL)]
HARMLESS_IDS = [f"s{i}" for i in range(N_PER_LABEL)]


def _batch(
    harmful: torch.Tensor, harmless: torch.Tensor, modality: str, ids: tuple[list[str], list[str]] | None = None
) -> StateBatch:
    h_ids, s_ids = ids or (HARMFUL_IDS, HARMLESS_IDS)
    n_h, n_s = harmful.shape[0], harmless.shape[0]
    return StateBatch(
        states=torch.cat([harmful, harmless]).to(torch.float32),
        item_ids=list(h_ids[:n_h]) + list(s_ids[:n_s]),
        labels=["harmful"] * n_h + ["harmless"] * n_s,  # type: ignore[list-item]
        modalities=[modality] * (n_h + n_s),  # type: ignore[list-item]
        instructions=[f"instruction {i}" for i in range(n_h + n_s)],
    )


@pytest.fixture()
def text_batch() -> StateBatch:
    return _batch(*_text_states(), "text")


def _collapsed_batch(fraction: float, drift: torch.Tensor) -> StateBatch:
    """Text items plus image items = text items + drift, with image-harmful moved by ``fraction`` of the
    text refusal direction r = 4u towards harmless."""
    harmful, harmless = _text_states()
    text = _batch(harmful, harmless, "text")
    image = _batch(harmful + drift - fraction * 4 * U, harmless + drift, "image")
    return text.concat(image)


def _as_list(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x]


# ---------------------------------------------------------------------------------------------- StateBatch


def test_state_batch_validates_lengths_labels_and_duplicates() -> None:
    states = torch.zeros(2, L, D)
    with pytest.raises(ValueError, match="labels has 1 entries"):
        StateBatch(states, ["a", "b"], ["harmful"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="label must be one of 'harmful', 'harmless'; got 'benign'"):
        StateBatch(states, ["a", "b"], ["harmful", "benign"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="'video'"):
        StateBatch(states, ["a", "b"], ["harmful", "harmless"], ["text", "video"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="occurs twice"):
        StateBatch(states, ["a", "a"], ["harmful", "harmless"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"\[n, L, d\]"):
        StateBatch(torch.zeros(2, D), ["a", "b"], ["harmful", "harmless"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="NaN"):
        StateBatch(torch.full((1, L, D), float("nan")), ["a"], ["harmful"], ["text"], ["x"])  # type: ignore[list-item]


def test_select_and_concat_keep_rows_aligned() -> None:
    states = torch.arange(4 * L * D, dtype=torch.float32).reshape(4, L, D)
    batch = StateBatch(states, ["a", "b", "a", "b"], ["harmful", "harmless"] * 2, ["text", "text", "image", "image"],
                       ["ia", "ib", "ia", "ib"])  # fmt: skip
    image_harmless = batch.select(modality="image", label="harmless")
    assert image_harmless.item_ids == ["b"] and torch.equal(image_harmless.states, states[3:4])
    text = batch.select(modality="text")
    both = text.concat(batch.select(modality="image"))
    assert both.item_ids == batch.item_ids and torch.equal(both.states, states)
    assert len(batch.select(modality="audio")) == 0
    with pytest.raises(ValueError, match="'text', 'image', 'audio'"):
        batch.select(modality="video")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="occurs twice"):
        text.concat(text)


# ---------------------------------------------------------------------------------------------- formulas 1-4


def test_refusal_direction_recovers_planted_direction(text_batch: StateBatch) -> None:
    r = refusal_directions(text_batch)
    assert r.shape == (L, D) and r.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(r.double(), U, dim=-1)
    assert bool((cos > 0.999).all())
    torch.testing.assert_close(r.double(), 4 * U, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit_directions(r).double().norm(dim=-1), torch.ones(L, dtype=torch.float64))


def test_refusal_direction_ignores_non_text_items(text_batch: StateBatch) -> None:
    harmful, harmless = _text_states()
    image = _batch(harmful - 10 * U, harmless + 10 * U, "image")  # would flip r if it were used
    torch.testing.assert_close(refusal_directions(text_batch.concat(image)), refusal_directions(text_batch))


def test_refusal_direction_needs_both_text_labels(text_batch: StateBatch) -> None:
    with pytest.raises(ValueError, match="no text/harmless"):
        refusal_directions(text_batch.select(label="harmful"))
    with pytest.raises(ValueError, match="no text/harmful"):
        refusal_directions(text_batch.select(label="harmless").concat(
            _batch(*_text_states(), "image")))  # fmt: skip


def test_gap_equals_planted_and_auroc_is_one(text_batch: StateBatch) -> None:
    proj = project(text_batch.states, unit_directions(refusal_directions(text_batch)))
    assert proj.shape == (2 * N_PER_LABEL, L)
    assert refusal_gap(proj, text_batch.labels) == pytest.approx([4 * n for n in U_NORMS], rel=1e-5)
    assert auroc_per_layer(proj, text_batch.labels) == [1.0] * L


def test_project_matches_dot_product_and_rejects_unnormalised_dirs() -> None:
    g = torch.Generator().manual_seed(3)
    states = torch.randn(5, L, D, generator=g)
    dirs = _unit(torch.randn(L, D, generator=g))
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


# ---------------------------------------------------------------------------------------------- formula 5


def test_modality_drift_pairs_items_by_id() -> None:
    harmful, harmless = _text_states()
    text = _batch(harmful, harmless, "text")
    w = 3 * U_HAT + 4 * V_HAT  # ||w|| = 5, cos(w, r) = 3/5 at every layer
    # Unbalanced, shuffled subset of the text items (4 harmful, 6 harmless) plus an image-only item:
    # an unpaired text mean would be base + u, the paired one base + 0.6 u, so pairing matters.
    order_h, order_s = [2, 0, 3, 1], [5, 1, 0, 4, 2, 3]
    image = _batch(harmful[order_h] + w, harmless[order_s] + w, "image",
                   ([HARMFUL_IDS[i] for i in order_h], [HARMLESS_IDS[i] for i in order_s]))  # fmt: skip
    extra = _batch(harmful[:1] + 100.0, harmless[:1], "image", (["only-image"], ["only-image-2"]))
    batch = text.concat(image).concat(extra)
    torch.testing.assert_close(modality_drift(batch, "image").double(), w, rtol=1e-5, atol=1e-5)
    assert torch.equal(modality_drift(batch, "text"), torch.zeros(L, D))

    profile = build_profile(batch, "m", "h", {})
    assert profile.metrics["drift_norm"]["image"] == pytest.approx([5.0] * L, rel=1e-5)
    assert profile.metrics["cos_drift_refusal"]["image"] == pytest.approx([0.6] * L, abs=1e-5)
    torch.testing.assert_close(profile.drifts["image"].double(), w, rtol=1e-5, atol=1e-5)


def test_modality_drift_needs_shared_ids() -> None:
    harmful, harmless = _text_states()
    batch = _batch(harmful, harmless, "text").concat(
        _batch(harmful, harmless, "audio", ([f"x{i}" for i in range(8)], [f"y{i}" for i in range(8)])))  # fmt: skip
    with pytest.raises(ValueError, match="no item id occurs both as text and as audio"):
        modality_drift(batch, "audio")


def test_cos_refusal_within_hand_computed() -> None:
    harmful, harmless = _text_states()
    z = 3 * U.norm(dim=-1, keepdim=True) * V_HAT  # ⟂ r = 4u with ||z|| = 3||u|| -> r^m = r + z
    batch = _batch(harmful, harmless, "text").concat(_batch(harmful + z, harmless, "audio"))
    profile = build_profile(batch, "m", "h", {})
    assert profile.metrics["cos_refusal_within"]["audio"] == pytest.approx([0.8] * L, abs=1e-5)  # 4/5
    # z is orthogonal to the axis: the gap along r̂ is unchanged, and the drift is z/2.
    assert profile.metrics["collapse_ratio"]["audio"] == pytest.approx([1.0] * L, abs=1e-5)
    torch.testing.assert_close(profile.drifts["audio"].double(), z / 2, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- profile


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


def test_normalised_score_hand_computed() -> None:
    proj = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
    lo, hi = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 5.0])
    torch.testing.assert_close(normalised_score(proj, lo, hi), torch.tensor([[0.5, 0.25], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="undefined"):
        normalised_score(proj, lo, lo)


def test_build_profile_needs_both_labels_per_modality() -> None:
    harmful, harmless = _text_states()
    batch = _batch(harmful, harmless, "text").concat(_batch(harmful, harmless[:0], "image"))
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


# ---------------------------------------------------------------------------------------------- embed_2d


def test_embed_2d_pca_is_an_isometry_on_planar_data() -> None:
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(12, 2)) * np.array([3.0, 1.0])
    basis, _ = np.linalg.qr(rng.normal(size=(D, 2)))
    states = torch.from_numpy(coords @ basis.T + 5.0)
    emb = embed_2d(states, method="pca")
    assert emb.shape == (12, 2)
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(emb[:, None] - emb[None], axis=-1), dist, atol=1e-9)
    np.testing.assert_array_equal(embed_2d(states, method="pca"), emb)


def test_embed_2d_umap_is_deterministic_for_a_seed() -> None:
    warm_up_umap()
    states = torch.randn(30, D, generator=torch.Generator().manual_seed(0))
    first = embed_2d(states, method="umap", seed=7, n_neighbors=5)
    assert first.shape == (30, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(embed_2d(states, method="umap", seed=7, n_neighbors=5), first)


def test_embed_2d_tiny_inputs_and_bad_arguments() -> None:
    assert embed_2d(np.zeros((0, D))).shape == (0, 2)
    np.testing.assert_array_equal(embed_2d(np.ones((1, D))), np.zeros((1, 2)))
    two = np.stack([np.zeros(D), np.ones(D)])
    emb = embed_2d(two, method="umap")  # too few points for UMAP: PCA
    np.testing.assert_array_equal(emb, embed_2d(two, method="pca"))
    assert emb.shape == (2, 2) and np.linalg.norm(emb[0] - emb[1]) == pytest.approx(np.sqrt(D))
    with pytest.raises(ValueError, match="method must be one of 'umap', 'pca'; got 'tsne'"):
        embed_2d(two, method="tsne")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        embed_2d(np.zeros((2, L, D)))


def test_choose_strength_rule_on_a_scripted_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per modality: image harmful refused from α ≥ 1.5, harmless from α ≥ 3 → 1.5 (the smallest of the best
    feasible); audio harmful from α ≥ 1, harmless from α ≥ 1.5 → 1.0. With a zero budget and over-refusal
    already at α = 0.5, fall back to the smallest α. The choice is applied per modality to a config."""
    import explorer.calibration as calibration
    import explorer.regap as regap
    from explorer.calibration import choose_strength
    from explorer.data import Instruction
    from explorer.regap import CorrectionConfig

    items = [Instruction(f"{lab}-{i}", f"request {i}", lab, "c", "calibration") for lab in ("harmful", "harmless")
             for i in range(4)]
    by_text = {item.instruction + item.label: item for item in items}

    class Shown:
        def __init__(self, item: Instruction, modality: str) -> None:
            self.item, self.modality = item, modality

    def scripted(_model, prompt, _profile, config, max_new_tokens=16):  # type: ignore[no-untyped-def]
        assert config.modality_strengths == ()  # candidates are tried as plain strengths
        harmful = prompt.item.label == "harmful"
        alpha = config.strength if config.mode != "off" and prompt.modality != "text" else 0.0
        refuse_from = thresholds.get(prompt.modality, {}).get("harmful" if harmful else "harmless", float("inf"))
        refuse = alpha >= refuse_from
        return regap.GenerationResult("I can't help." if refuse else "Sure.", [], config.mode, prompt.modality, alpha)

    class ScriptedModel:
        def render(self, item: Instruction, modality: str) -> Shown:
            return Shown(by_text[item.instruction + item.label], modality)

    model = ScriptedModel()
    monkeypatch.setattr(calibration, "generate", scripted)
    thresholds = {"image": {"harmful": 1.5, "harmless": 3.0}, "audio": {"harmful": 1.0, "harmless": 1.5}}
    start = CorrectionConfig(mode="adaptive", modality_strengths=(("image", 9.0),))
    choice = choose_strength(model, items, None, start, ["text", "image", "audio"])  # type: ignore[arg-type]
    assert choice.per_modality == {"image": 1.5, "audio": 1.0} and choice.strength == 1.0
    assert choice.budget == pytest.approx(0.05)
    assert choice.rates["3.0"] == {"image/harmful": 1.0, "image/harmless": 1.0, "audio/harmful": 1.0,
                                   "audio/harmless": 1.0}
    assert choice.rates["1.0"] == {"image/harmful": 0.0, "image/harmless": 0.0, "audio/harmful": 1.0,
                                   "audio/harmless": 0.0}
    applied = choice.apply(CorrectionConfig(mode="adaptive", strength=2.0))
    assert applied.for_modality("image").strength == 1.5 and applied.for_modality("audio").strength == 1.0
    assert applied.for_modality("video").strength == 1.0
    assert choice.to_dict()["strength"] == 1.0 and choice.to_dict()["per_modality"] == {"image": 1.5, "audio": 1.0}
    thresholds["image"] = {"harmful": 1.5, "harmless": 0.5}
    choice = choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["image"],  # type: ignore[arg-type]
                             over_refusal_budget=0.0)
    assert choice.per_modality == {"image": 0.5}
    with pytest.raises(ValueError, match="image/audio"):
        choose_strength(model, items, None, CorrectionConfig(mode="adaptive"), ["text"])  # type: ignore[arg-type]
