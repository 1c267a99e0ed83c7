"""Claims docs/demo-build.md makes across recorded runs, checked on the records themselves."""

from __future__ import annotations

import json
from pathlib import Path

RECORD = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "demo_collapse.json"


def test_the_pinned_base_ranking_gives_the_collapse_folders_imprint_figures_exactly() -> None:
    """"It gives collapse 3's seven folder figures exactly": layers up to the corrected one are the base's alone, so
    the base-only ranking (`--base-directions`) must agree with the folder's `--directions` on every direction both
    measured; a cut in the wrong place or a LoRA reaching below layer 16 would break this."""
    record = json.loads(RECORD.read_text())
    folder, base = record["collapse_3"]["directions"], record["pinned_base"]["directions"]
    assert len(folder) == 7
    for name, shares in folder.items():
        assert base[name] == shares, name


def test_the_ranking_is_sorted_and_collapse_6_uses_distinct_ranked_directions() -> None:
    ranking = json.loads(RECORD.read_text())["pinned_base"]["ranking"]
    for rows in ranking.values():
        ratios = [row["median_norm_ratio"] for row in rows]
        assert ratios == sorted(ratios) and len(rows) == 25  # the folder's own offsets + 24 seeds
    assert ranking["audio"][0]["seed"] == "seed 1023"
    assert [row["seed"] for row in ranking["image"][:2]] == ["seed 1023", "seed 1012"]
