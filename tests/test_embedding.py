"""Tests for explorer.geometry.embedding: deterministic 2-D maps (PCA exact, UMAP seeded) and small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.geometry.embedding import embed_2d, warm_up_umap

L, D = 3, 16


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


@pytest.mark.slow  # numba compiles UMAP's kernels on first use (~25 s on 2 cores)
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
