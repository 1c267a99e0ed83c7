"""The card's tables from an eval summary: verdicts per mode, paired tests, corrected per-layer AUROC.

Why apart from card.py: these are pure functions of `eval_summary`'s numbers (tested against a summary written by
a real run), while card.py assembles the prose around them.
"""

from __future__ import annotations

from typing import Any

from explorer.core.vocab import MEDIA_MODALITIES, MODES

__all__ = ["auroc_rows", "paired_holding", "paired_table", "verdict_cell"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdict_cell(cli: dict[str, Any], key: str, verdict: str = "refused") -> str:
    """One verdict's rate with its 95% Wilson interval and count, e.g. "56.4% [47.0–65.3], 62/110"."""
    stats = cli["verdicts"][key]
    entry = stats[verdict]
    return f"{_pct(entry['rate'])} [{100 * entry['ci'][0]:.1f}–{100 * entry['ci'][1]:.1f}], {entry['count']}/{stats['n']}"


def _paired_keys(cli: dict[str, Any]) -> list[str]:
    """The summary's paired tests in the card's order: modality, reference, mode, label."""
    order = {mode: i for i, mode in enumerate(MODES)}

    def rank(key: str) -> tuple:
        where, versus = key.split(" vs ")
        modality, label, mode = where.split("/")
        return (MEDIA_MODALITIES.index(modality) if modality in MEDIA_MODALITIES else 9, order.get(versus, 9),
                order.get(mode, 9), label)

    return sorted(cli.get("paired", {}), key=rank)


def paired_table(cli: dict[str, Any]) -> str:
    """Markdown rows of every paired test: refusals of a mode against off / adaptive on the same items."""
    rows = ["| input | label | mode vs reference | refused (mode → reference) | difference [95% CI] | "
            "only mode / only reference | McNemar p | holds at 95% |", "|---|---|---|---|---|---|---|---|"]
    for key in _paired_keys(cli):
        test = cli["paired"][key]
        where, versus = key.split(" vs ")
        modality, label, mode = where.split("/")
        low, high = test["difference_ci"]
        rows.append(f"| {modality} | {label} | {mode} vs {versus} | {_pct(test['rate_a'])} vs {_pct(test['rate_b'])} "
                    f"| {100 * test['difference']:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] | "
                    f"{test['only_a']} / {test['only_b']} | {test['p_value']:.3g} | "
                    f"{'**yes**' if test['holds'] else 'no'} |")
    return "\n".join(rows)


def paired_holding(cli: dict[str, Any], versus: str = "off") -> str:
    """In words, which modes change harmful refusals against `versus` at 95%, per media modality."""
    parts = []
    for modality in MEDIA_MODALITIES:
        held = [key.split(" vs ")[0].split("/")[2] for key in _paired_keys(cli)
                if key.startswith(f"{modality}/harmful/") and key.endswith(f" vs {versus}")
                and cli["paired"][key]["holds"]]
        tested = [key for key in cli.get("paired", {}) if key.startswith(f"{modality}/harmful/")
                  and key.endswith(f" vs {versus}")]
        if tested:
            parts.append(f"{modality}: {', '.join(held) if held else 'none'} of {len(tested)}")
    return "; ".join(parts)


def auroc_rows(cli: dict[str, Any]) -> str:
    """Markdown rows of the per-layer AUROC of every media modality × mode, on the states each mode produced."""
    auroc = cli.get("auroc", {})
    keys = [f"{m}/{mode}" for m in MEDIA_MODALITIES for mode in MODES if f"{m}/{mode}" in auroc]
    if not keys:
        return ""
    layers = len(auroc[keys[0]])
    rows = ["| input / mode | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
            "|---|" + "---|" * layers]
    rows += [f"| {key} | " + " | ".join(f"{v:.3f}" for v in auroc[key]) + " |" for key in keys]
    return "\n".join(rows)
