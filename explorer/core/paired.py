"""Paired tests between two modes run on the same items (docs/method.md, "Uncertainty").

Why paired: every mode of a run answers the same items, so whether adaptive refuses more than off is a question
about the items where the two disagree. Reading it off two overlapping Wilson intervals throws that pairing away
and misses real differences (or, eyeballed, finds false ones). For each item answered under both modes:

- the **exact McNemar test**: under "no difference" the items where only one mode refused split 50/50, so the
  two-sided p-value is the binomial test of `only_a` successes in `only_a + only_b` trials at 1/2 (scipy);
- the **paired difference** `(only_a − only_b) / n` with its 95% interval by Newcombe's square-and-add method
  for paired proportions (Newcombe 1998, method 10): the Wilson intervals of the two rates combined with the
  continuity-corrected correlation φ of the pairs.

A difference **holds at 95%** when the McNemar p-value is below 0.05.

>>> result = paired_test([True] * 12 + [False] * 8, [True] * 2 + [False] * 18)
>>> result["only_a"], result["only_b"], round(result["difference"], 2), result["p_value"] < 0.05
(10, 0, 0.5, True)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from scipy.stats import binomtest

from explorer.core.intervals import CONFIDENCE, wilson_interval

__all__ = ["ALPHA", "newcombe_paired_interval", "paired_test"]

#: The significance level of "holds at 95%".
ALPHA = 1 - CONFIDENCE


def newcombe_paired_interval(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float]:
    """Newcombe's method-10 interval for p_a − p_b from the four cells of the paired table."""
    n = both + only_a + only_b + neither
    if n == 0:
        raise ValueError("a paired interval needs at least one pair")
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = wilson_interval(both + only_a, n)  # type: ignore[misc]
    low_b, high_b = wilson_interval(both + only_b, n)  # type: ignore[misc]
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    # Newcombe's continuity-corrected correlation: a·d − b·c shrunk by n/2 towards 0 when positive, 0 in between
    corrected = cross - n / 2 if cross > n / 2 else cross if cross < 0 else 0.0
    phi = corrected / math.sqrt(margins) if margins else 0.0
    difference = p_a - p_b
    below = math.sqrt(max(0.0, (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2))
    above = math.sqrt(max(0.0, (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2))
    return max(-1.0, difference - below), min(1.0, difference + above)


def paired_test(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test and the paired difference of two verdict lists on the same items (a[i] and b[i] are
    item i's verdicts under the two modes). JSON-ready: counts, rates, difference, its interval, p-value, holds."""
    if len(a) != len(b):
        raise ValueError(f"paired verdicts need the same items: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("a paired test needs at least one item answered under both modes")
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    neither = len(a) - both - only_a - only_b
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    low, high = newcombe_paired_interval(both, only_a, only_b, neither)
    return {"n": len(a), "both": both, "only_a": only_a, "only_b": only_b, "neither": neither,
            "rate_a": (both + only_a) / len(a), "rate_b": (both + only_b) / len(a),
            "difference": (only_a - only_b) / len(a), "difference_ci": [low, high], "p_value": min(1.0, p_value),
            "holds": p_value < ALPHA}
