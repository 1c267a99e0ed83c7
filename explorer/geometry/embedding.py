"""2-D maps of one layer's states for the scatter plot: UMAP, or PCA for small inputs and on request.

Why its own module: UMAP is slow to import and to compile (numba), so only the plots pull it in, and the app
warms it up in the background (`warm_up_umap`) instead of making the first Analyse wait.
"""

from __future__ import annotations

import threading
from typing import Literal, get_args

import numpy as np
import torch

from explorer.core.vocab import check_choice

__all__ = ["EmbedMethod", "EMBED_METHODS", "embed_2d", "warm_up_umap"]

EmbedMethod = Literal["umap", "pca"]
EMBED_METHODS: tuple[str, ...] = get_args(EmbedMethod)
_MIN_UMAP_POINTS = 4  # UMAP's spectral initialisation fails below 4 points; PCA is used instead.


def _pca_2d(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = x.shape
    out = np.zeros((n, 2), dtype=np.float64)
    k = min(2, n, d)
    if n < 2 or k == 0:
        return out
    out[:, :k] = PCA(n_components=k, svd_solver="full", random_state=seed).fit_transform(x)
    return out


def embed_2d(
    states: torch.Tensor | np.ndarray,
    method: EmbedMethod = "umap",
    seed: int = 0,
    n_neighbors: int = 15,
) -> np.ndarray:
    """2-D embedding of ``[n, d]`` states (one layer) for the scatter plots.

    Deterministic for a given ``seed``: UMAP runs with ``random_state=seed`` (which makes it
    single-threaded), PCA uses the exact SVD. ``n_neighbors`` is capped at ``n − 1``.

    Small inputs: ``n == 0`` gives an empty ``[0, 2]`` array, ``n == 1`` gives ``[[0, 0]]``; UMAP needs at
    least 4 points, so ``method="umap"`` with fewer points returns the PCA embedding. When ``d == 1`` the
    second column is zero.

    Returns:
        float64 array ``[n, 2]``.
    """
    check_choice("method", method, EMBED_METHODS)
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors}")
    x = states.detach().to("cpu", torch.float64).numpy() if isinstance(states, torch.Tensor) else np.asarray(
        states, dtype=np.float64
    )
    if x.ndim != 2:
        raise ValueError(f"states must have shape [n, d] (one layer), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("states contain NaN or inf")
    n = x.shape[0]
    if method == "pca" or n < _MIN_UMAP_POINTS:
        return _pca_2d(x, seed)
    import umap  # imported lazily: importing umap-learn takes seconds

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, n - 1),
        random_state=seed,
        n_jobs=1,  # random_state forces one thread; saying so avoids umap's warning
    )
    return np.asarray(reducer.fit_transform(x.astype(np.float32)), dtype=np.float64)


_warm_lock = threading.Lock()
_warmed = False


def warm_up_umap() -> None:
    """Runs UMAP once on tiny random data so numba compiles its kernels (idempotent, thread-safe)."""
    global _warmed
    with _warm_lock:
        if _warmed:
            return
        data = np.random.default_rng(0).normal(size=(24, 8))
        embed_2d(data, method="umap", seed=0, n_neighbors=5)
        _warmed = True
