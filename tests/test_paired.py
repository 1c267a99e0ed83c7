"""Paired tests between modes (explorer/core/paired.py, docs/method.md "Uncertainty"): McNemar's exact p against the
binomial formula written out, Newcombe's interval against the published worked example and by simulated coverage,
and the metrics / compare plumbing on records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explorer.core.paired import newcombe_paired_interval, paired_test
from explorer.evaluation.verdict_stats import paired_comparisons, verdict_rates


def _flags(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


@pytest.mark.parametrize("only_a, only_b", [(10, 0), (7, 2), (3, 3), (0, 5), (0, 0), (25, 12)])
def test_mcnemar_exact_p_is_the_two_sided_binomial_tail(only_a, only_b):
    a, b = _flags(4, only_a, only_b, 9)
    test = paired_test(a, b)
    k, n = min(only_a, only_b), only_a + only_b
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 0.5
    assert test["p_value"] == pytest.approx(min(1.0, 2 * tail))
    assert (test["only_a"], test["only_b"], test["both"], test["neither"]) == (only_a, only_b, 4, 9)
    assert test["difference"] == pytest.approx((only_a - only_b) / len(a))
    assert test["holds"] == (test["p_value"] < 0.05)


def test_newcombe_interval_matches_the_textbook_example():
    """Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), chapter 8: complete response
    before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]: the Newcombe
    square-and-add interval is −0.1186 to −0.0046 for the difference −0.0621 (the `contingencytables` R package's
    test gives the same)."""
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    assert paired_test(*_flags(59, 6, 16, 80))["difference"] == pytest.approx(-10 / 161)


def test_newcombe_interval_covers_the_true_difference_95_percent_of_the_time():
    """2,000 simulated studies of 60 correlated pairs: the interval covers the true difference 93–98% of the time
    (a bug in φ, a swapped bound or a missing term moves coverage far outside)."""
    rng = np.random.default_rng(0)
    cells = np.array([0.30, 0.15, 0.05, 0.50])  # both, only a, only b, neither
    truth = cells[1] - cells[2]
    covered = 0
    for _ in range(2000):
        both, only_a, only_b, neither = rng.multinomial(60, cells)
        low, high = newcombe_paired_interval(both, only_a, only_b, neither)
        covered += low <= truth <= high
    assert 0.93 <= covered / 2000 <= 0.98, covered / 2000


def test_a_paired_test_needs_matching_nonempty_lists():
    with pytest.raises(ValueError, match="same items"):
        paired_test([True], [True, False])
    with pytest.raises(ValueError, match="at least one item"):
        paired_test([], [])


def _record(item: str, modality: str, mode: str, label: str, text: str, refused: bool, skipped: bool = False):
    record = {"id": item, "modality": modality, "mode": mode, "label": label, "text": text, "refused": refused}
    return {**record, "skipped": "ValueError: bad"} if skipped else record


def test_paired_comparisons_pair_items_and_count_broken_answers_as_not_refused():
    refusal, loop, answer = "I can't help with that.", "I can't help with that. " * 4, "Sure, here you go."
    done = {}
    for i in range(6):
        done[(f"h{i}", "image", "off")] = _record(f"h{i}", "image", "off", "harmful", answer, False)
        # adaptive: 3 refusals, 2 loops that the judge read as refusals (broken), 1 skipped
        text = refusal if i < 3 else loop
        done[(f"h{i}", "image", "adaptive")] = _record(f"h{i}", "image", "adaptive", "harmful", text, True, i == 5)
    tests = paired_comparisons([(f"h{i}", "harmful") for i in range(6)], ["text", "image"], ["off", "adaptive"],
                               done, lambda item, modality, mode: (item, modality, mode))
    assert list(tests) == ["image/harmful/adaptive vs off"]  # text is never corrected; no reverse duplicate
    test = tests["image/harmful/adaptive vs off"]
    assert (test["n"], test["only_a"], test["only_b"], test["both"]) == (5, 3, 0, 0)
    rates = verdict_rates([r for k, r in done.items() if k[2] == "adaptive" and not r.get("skipped")])
    assert rates["n"] == 5 and rates["refused"]["count"] == 3 and rates["broken"]["count"] == 2
    assert rates["broken_reasons"] == {"word loop": 2}
    assert sum(rates[v]["rate"] for v in ("refused", "complied", "broken")) == pytest.approx(1.0)
