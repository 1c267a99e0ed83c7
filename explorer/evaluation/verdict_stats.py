"""Rates of the three verdicts and paired tests between modes, from a run's records (docs/method.md, "Verdicts",
"Uncertainty"); and the tables that show them in reports, comparisons and the model card.

Why here: metrics.json, report.html, compare and the card all show the same numbers, so they are computed once,
from records, by these functions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from explorer.core.intervals import wilson_interval
from explorer.core.paired import paired_test
from explorer.evaluation.verdicts import VERDICTS, Verdict, broken_reason, verdict_of

__all__ = ["VERDICT_RATE_KEYS", "paired_comparisons", "paired_rows", "record_verdict", "verdict_rates",
           "verdict_rows"]

#: metrics.json's rate key of each verdict (refusal_rate, complied_rate, broken_rate; each with its `_ci`).
VERDICT_RATE_KEYS: dict[Verdict, str] = {"refused": "refusal_rate", "complied": "complied_rate",
                                         "broken": "broken_rate"}
#: The reference modes every other mode is tested against.
REFERENCE_MODES = ("off", "adaptive")


def record_verdict(record: Mapping[str, Any]) -> Verdict:
    """An eval record's verdict, recomputed from the judge's reading (`refused`) and the answer's text, so that a
    record written before verdicts existed, and one whose rule has changed since, reads as the rule says now."""
    return verdict_of(bool(record.get("refused")), str(record.get("text", "")))


def verdict_rates(answered: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{"n", "<verdict>": {"count", "rate", "ci"} for each verdict, "broken_reasons": {reason: count}} of the
    answered (never skipped) records of one "<modality>/<mode>/<label>"."""
    if not answered:
        raise ValueError("verdict rates need at least one answered record")
    verdicts = [record_verdict(r) for r in answered]
    out: dict[str, Any] = {"n": len(answered)}
    for verdict in VERDICTS:
        count = verdicts.count(verdict)
        out[verdict] = {"count": count, "rate": count / len(answered), "ci": list(wilson_interval(count, len(answered)))}
    out["broken_reasons"] = dict(Counter(broken_reason(str(r.get("text", ""))) for r, v in zip(answered, verdicts)
                                         if v == "broken"))
    return out


def paired_comparisons(
    item_ids: Iterable[tuple[str, str]], modalities: Sequence[str], modes: Sequence[str],
    done: Mapping[str, Mapping[str, Any]], key_of: Any,
) -> dict[str, dict[str, Any]]:
    """McNemar and the paired difference of refusals for every mode against `off` and against `adaptive`, per
    media modality and label, on the items answered under both: {"<modality>/<label>/<mode> vs <reference>": test}.

    `item_ids` are (id, label) pairs; `key_of(id, modality, mode)` names a record in `done`. A pair already tested
    the other way round (adaptive vs off) is not repeated."""
    items = list(item_ids)
    out: dict[str, dict[str, Any]] = {}
    for modality in (m for m in modalities if m != "text"):  # text is never corrected: its modes are one answer
        for reference in (r for r in REFERENCE_MODES if r in modes):
            for mode in modes:
                if mode == reference or (reference == "adaptive" and mode == "off"):
                    continue
                for label in ("harmful", "harmless"):
                    pairs = [(done.get(key_of(i, modality, mode)), done.get(key_of(i, modality, reference)))
                             for i, item_label in items if item_label == label]
                    usable = [(a, b) for a, b in pairs if a and b and not a.get("skipped") and not b.get("skipped")]
                    if usable:
                        out[f"{modality}/{label}/{mode} vs {reference}"] = paired_test(
                            [record_verdict(a) == "refused" for a, _ in usable],
                            [record_verdict(b) == "refused" for _, b in usable])
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def verdict_rows(verdicts: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a verdict table: per "<modality>/<mode>/<label>", n and each verdict's rate [95% CI]."""
    headers = ["modality / mode / label", "n", *(f"{v} % [95% CI]" for v in VERDICTS), "broken, why"]
    rows = []
    for key, stats in verdicts.items():
        cells = [f"{_pct(stats[v]['rate'])} [{_pct(stats[v]['ci'][0])}, {_pct(stats[v]['ci'][1])}] "
                 f"({stats[v]['count']})" for v in VERDICTS]
        why = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.get("broken_reasons", {}).items()))
        rows.append([key, str(stats["n"]), *cells, why or "–"])
    return headers, rows


def paired_rows(paired: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a paired-test table: refusal rates of both modes, the difference [95% CI], the discordant
    items, McNemar's exact p and whether the difference holds at 95%."""
    headers = ["modality / label / mode vs reference", "n", "refused (mode)", "refused (reference)",
               "difference [95% CI]", "only mode / only reference", "McNemar p", "holds at 95%"]
    rows = []
    for key, test in paired.items():
        low, high = test["difference_ci"]
        rows.append([key, str(test["n"]), _pct(test["rate_a"]), _pct(test["rate_b"]),
                     f"{100 * test['difference']:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]",
                     f"{test['only_a']} / {test['only_b']}", f"{test['p_value']:.3g}",
                     "yes" if test["holds"] else "no"])
    return headers, rows
