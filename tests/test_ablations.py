"""docs/method.md's ablation table is generated from its recorded run (benchmarks/results/ablations.json): the page
and the JSON must agree, and the JSON must be the run of the demo weights shipped now."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from ablations import table  # noqa: E402

RECORD = ROOT / "benchmarks" / "results" / "ablations.json"
MARKED = re.compile(r"<!-- ablations: benchmarks/results/ablations.json -->\n(.*?)<!-- /ablations -->", re.S)


def test_the_method_page_shows_the_recorded_ablations():
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    shown = MARKED.search((ROOT / "docs" / "method.md").read_text(encoding="utf-8"))
    assert shown, "docs/method.md lost its ablations marker"
    assert shown.group(1).strip() == table(recorded).strip(), (
        "docs/method.md's ablation table differs from benchmarks/results/ablations.json: paste "
        "`python benchmarks/ablations.py --table` between the markers")


def test_the_recorded_ablations_are_of_the_shipped_demo_weights():
    from explorer.model.loading import folder_revision

    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    assert recorded["revision"] == folder_revision(ROOT / "assets" / "demo_model")
    assert recorded["calibration_source"] == "validation"  # never the evaluation split
    for name, row in recorded["variants"].items():
        for modality in ("image", "audio"):
            assert row[modality]["harmful_refused"]["n"] + row[modality]["harmless_failed"]["n"] == recorded["items"]
            assert (name == "default") == ("harmful_vs_default" not in row[modality])


def test_a_changed_record_fails_the_page_check():
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    recorded["variants"]["default"]["image"]["harmful_refused"]["rate"] += 0.01
    shown = MARKED.search((ROOT / "docs" / "method.md").read_text(encoding="utf-8"))
    assert shown.group(1).strip() != table(recorded).strip()
