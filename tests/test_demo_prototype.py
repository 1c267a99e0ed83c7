"""docs/demo-prototype.md's tables are generated from the prototype's recorded counts
(benchmarks/results/demo_prototype.json): the page and the record must agree, and the record must be consistent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo_prototype import DEV_SETS, PAGE, RECORD, TABLES, marked, rate


def _recorded() -> dict:
    return json.loads(RECORD.read_text(encoding="utf-8"))


def test_the_page_shows_the_recorded_tables():
    page = PAGE.read_text(encoding="utf-8")
    for name, render in TABLES.items():
        shown = marked(name).search(page)
        assert shown, f"docs/demo-prototype.md lost its '{name}' marker"
        assert shown.group(2).strip() == render(_recorded()).strip(), (
            f"the '{name}' table differs from {RECORD.name}: run `python benchmarks/demo_prototype.py --write`")


def test_a_changed_record_fails_the_page_check():
    recorded = _recorded()
    recorded["row1_language"]["lora_in_house_corpus"]["advbench"]["harmful_refused"] -= 1
    shown = marked("language").search(PAGE.read_text(encoding="utf-8"))
    assert shown.group(2).strip() != TABLES["language"](recorded).strip()


def test_the_record_counts_are_consistent():
    recorded = _recorded()
    for name, sets in recorded["row1_language"].items():
        for s in DEV_SETS:
            c = sets[s]
            assert c["n_harmful"] + c["n_harmless"] == c["n"], (name, s)
            assert 0 <= c["harmful_refused"] <= c["n_harmful"] and 0 <= c["harmless_refused"] <= c["n_harmless"]
    for v in recorded["row2_repair"]:
        for part in ("text", "image", "adaptive"):
            if part in v:
                assert v[part]["n_harmful"] + v[part]["n_harmless"] == v[part]["n"], (v["variant"], part)


def test_the_second_prototype_counts_agree_with_each_other():
    """Rows 3-4: the answer categories of the script table add up to the refusal counts of the repair table (two
    separate tallies of the same answers), and every reading count stays within its total."""
    recorded = _recorded()
    taught = [v for v in recorded["row2_repair"] if "harmful_answers" in v]
    assert len(taught) == 3
    for v in taught:
        for part, a in v["harmful_answers"].items():
            refused = a["n_harmful"] - a["generic"] - a["generic_tail"] - a["off_script"]
            assert refused == v[part]["harmful_refused"], (v["variant"], part)
            assert 0 <= a["refused_with_tail"] <= refused
        for c in v["calibration_sweep"]:
            assert c["harmful_refused"] <= c["n_harmful"] and c["harmless_failed"] >= c["harmless_refused"]
        assert v["alpha_max"] in [c["alpha_max"] for c in v["calibration_sweep"] if c["within_budget"]]
    for r in recorded["row4_reader"]["sets"].values():
        assert 0 <= r["read"] <= r["single_token"] <= r["boxes"]
    for r in recorded["row4_ctc_reader"]["sets"].values():
        assert 0 <= r["exact"] <= r["exact_whitespace_collapsed"] <= r["requests"]
        assert r["char_errors_whitespace_collapsed"] <= r["char_errors"] <= r["characters"]
    for r in recorded["row4_speech_reader"]["sets"].values():
        assert 0 <= r["exact"] <= r["requests"] and r["word_errors"] >= 0


def test_rate_shows_count_percentage_and_wilson_interval():
    assert rate(8, 10) == "8/10 = 80% [49–94]"
    assert rate(0, 0) == "–"
