"""95% intervals for the numbers a run reports: Wilson for rates, a stratified bootstrap for AUROC.

Why: 56.4% refusal on 110 items is ±9 points; a difference between two modes smaller than that is not a finding.
Every rate in metrics.json carries its count (`n`) and its Wilson interval (`refusal_rate_ci`), every per-layer
AUROC its bootstrap interval (`auroc_ci`); docs/method.md ("Uncertainty") gives the formulas.

>>> [round(x, 4) for x in wilson_interval(5, 10)]
[0.2366, 0.7634]
>>> wilson_interval(0, 0) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest, rankdata

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "auroc_bootstrap_interval", "auroc_intervals", "wilson_interval"]

CONFIDENCE = 0.95
#: Resamples of the AUROC bootstrap: the percentile interval's ends move by < 0.005 between seeds at 1,000.
BOOTSTRAP_RESAMPLES = 1000


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of `successes` / `total` (scipy's), or None when `total` is 0 (no rate).

    Wilson rather than the normal approximation: it stays inside [0, 1] and is honest at 0% and 100%, the rates
    a strong correction produces."""
    if total == 0:
        return None
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be in 0..{total}, got {successes}")
    ci = binomtest(successes, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


_RESAMPLES_AT_ONCE = 100
_PAIRS_AT_ONCE = 4_000_000  # harmful × harmless × layers up to which every pair is compared once (32 MB)


def _pairwise_aurocs(positive: np.ndarray, negative: np.ndarray,
                     picks: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The AUROC of each resample from one table of pairwise wins: a resample counts each (harmful, harmless) pair
    as often as it drew both, so its Mann–Whitney U is count-weighted sum of the wins (1, or ½ for a tie). Exactly
    `_auroc_columns` of the resampled rows (U is a sum of halves either way), without sorting each resample."""
    n_pos, n_neg, layers = positive.shape[0], negative.shape[0], positive.shape[1]
    diff = positive[:, None, :] - negative[None, :, :]
    wins = (diff > 0) + 0.5 * (diff == 0)  # [n_pos, n_neg, L]
    drawn_pos = np.stack([np.bincount(p, minlength=n_pos) for p, _ in picks]).astype(np.float64)
    drawn_neg = np.stack([np.bincount(n, minlength=n_neg) for _, n in picks]).astype(np.float64)
    per_negative = (drawn_pos @ wins.reshape(n_pos, n_neg * layers)).reshape(len(picks), n_neg, layers)
    return np.einsum("bjl,bj->bl", per_negative, drawn_neg) / (n_pos * n_neg)


def _auroc_columns(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUROC of every column (Mann–Whitney U / (n_pos · n_neg), ties counted half): [..., n_pos, L],
    [..., n_neg, L] → [..., L] (leading axes: resamples ranked at once)."""
    ranks = rankdata(np.concatenate([positive, negative], axis=-2), axis=-2)
    n_pos, n_neg = positive.shape[-2], negative.shape[-2]
    return (ranks[..., :n_pos, :].sum(axis=-2) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_bootstrap_interval(
    scores: np.ndarray, harmful: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Percentile interval of each layer's AUROC (harmful positive), resampling harmful and harmless items
    separately with replacement (stratified: every resample has both labels, the sample sizes are kept).

    `scores` [n, L] (projections per layer), `harmful` [n] booleans. The same resampled items serve every layer,
    so the intervals of two layers are comparable. Deterministic for a seed."""
    scores = np.asarray(scores, dtype=np.float64)
    harmful = np.asarray(harmful, dtype=bool)
    positive, negative = scores[harmful], scores[~harmful]
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise ValueError("an AUROC interval needs harmful and harmless items")
    rng = np.random.default_rng(seed)
    picks = [(rng.integers(0, len(positive), len(positive)), rng.integers(0, len(negative), len(negative)))
             for _ in range(resamples)]  # drawn in this order, so a seed gives the same resamples as ever
    if positive.shape[0] * negative.shape[0] * scores.shape[1] <= _PAIRS_AT_ONCE:
        draws = _pairwise_aurocs(positive, negative, picks)
    else:
        draws = np.empty((resamples, scores.shape[1]))
        for start in range(0, resamples, _RESAMPLES_AT_ONCE):  # ranked a block at a time: memory bounded
            block = picks[start : start + _RESAMPLES_AT_ONCE]
            draws[start : start + len(block)] = _auroc_columns(positive[np.stack([p for p, _ in block])],
                                                               negative[np.stack([n for _, n in block])])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high)]


def auroc_intervals(scores: np.ndarray, labels: Sequence[str]) -> list[list[float]]:
    """`auroc_bootstrap_interval` for "harmful"/"harmless" labels, as JSON-ready [low, high] lists per layer (the
    form metrics.json and the app's export store)."""
    harmful = np.array([label == "harmful" for label in labels])
    return [[low, high] for low, high in auroc_bootstrap_interval(scores, harmful)]
