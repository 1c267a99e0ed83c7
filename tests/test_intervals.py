"""Known answers for the intervals every reported rate and AUROC carries (explorer.core.intervals)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from explorer.core.intervals import (
    _auroc_columns,
    auroc_bootstrap_interval,
    wilson_interval,
)


@pytest.mark.parametrize("k, n, low, high", [
    # Wilson score interval, z = 1.959964: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), by hand
    (5, 10, 0.236593, 0.763407),
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
    (62, 110, 0.470363, 0.652615),  # the 56.4% of 110: about ±9 points
])
def test_wilson_interval_known_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


def test_auroc_columns_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(60, 4)).astype(float)  # many ties
    harmful = rng.random(60) < 0.4
    expected = [roc_auc_score(harmful, scores[:, layer]) for layer in range(4)]
    np.testing.assert_allclose(_auroc_columns(scores[harmful], scores[~harmful]), expected, rtol=0, atol=1e-12)


def test_auroc_bootstrap_interval_covers_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)

    def sample(n):
        harmful = np.arange(n) < n // 2
        scores = rng.normal(size=(n, 2)) + harmful[:, None] * np.array([1.0, 0.0])
        return scores, harmful

    small, large = sample(40), sample(400)
    ci_small, ci_large = auroc_bootstrap_interval(*small), auroc_bootstrap_interval(*large)
    for (scores, harmful), ci in ((small, ci_small), (large, ci_large)):
        for layer, (low, high) in enumerate(ci):
            assert low <= roc_auc_score(harmful, scores[:, layer]) <= high
    assert ci_large[0][1] - ci_large[0][0] < ci_small[0][1] - ci_small[0][0]
    assert ci_large[1][0] < 0.5 < ci_large[1][1]  # no signal on layer 1: the interval holds chance
    assert auroc_bootstrap_interval(*small) == ci_small  # deterministic for the seed
    perfect = auroc_bootstrap_interval(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([False, False, True, True]))
    assert perfect == [(1.0, 1.0)]


def test_the_pairwise_and_the_ranked_bootstrap_give_the_same_intervals(monkeypatch):
    """Two ways to the same U statistic (pairwise wins weighted by draw counts, or ranks of each resample): equal to
    the last bit, ties included, and both equal to a plain loop over resamples with scipy's ranks."""
    from scipy.stats import rankdata

    from explorer.core import intervals

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(60, 5)), 1)  # rounded: many ties
    harmful = rng.random(60) < 0.4
    pairwise = intervals.auroc_bootstrap_interval(scores, harmful, resamples=300)
    monkeypatch.setattr(intervals, "_PAIRS_AT_ONCE", 0)
    ranked = intervals.auroc_bootstrap_interval(scores, harmful, resamples=300)
    positive, negative = scores[harmful], scores[~harmful]
    draw = np.random.default_rng(0)
    loop = []
    for _ in range(300):
        p = positive[draw.integers(0, len(positive), len(positive))]
        n = negative[draw.integers(0, len(negative), len(negative))]
        ranks = rankdata(np.concatenate([p, n]), axis=0)
        loop.append((ranks[: len(p)].sum(axis=0) - len(p) * (len(p) + 1) / 2) / (len(p) * len(n)))
    tail = (1 - intervals.CONFIDENCE) / 2 * 100  # as the module computes it (not exactly 2.5 in floating point)
    low, high = np.percentile(np.array(loop), [tail, 100 - tail], axis=0)
    assert pairwise == ranked == [(float(lo), float(hi)) for lo, hi in zip(low, high)]
