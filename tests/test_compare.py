"""`python -m explorer compare`: two demo runs with different settings, the differing items named exactly, and
what is not comparable said on the page."""

from __future__ import annotations

import json

import pytest

from explorer.app.cli import main
from explorer.evaluation.compare import compare_runs, load_run
from explorer.evaluation.verdict_stats import record_verdict


def _records(folder):
    return {(r["id"], r["modality"], r["mode"]): r
            for r in map(json.loads, (folder / "generations.jsonl").read_text().splitlines())}


def test_compare_names_exactly_the_items_whose_verdict_differs(demo_runs, tmp_path):
    _, (gentle, strong, _) = demo_runs
    out = tmp_path / "cmp"
    assert main(["compare", str(gentle), str(strong), "--out", str(out)]) == 0
    a, b = _records(gentle), _records(strong)
    expected = sorted(key for key in a if key in b and not a[key].get("skipped") and not b[key].get("skipped")
                      and record_verdict(a[key]) != record_verdict(b[key]))
    assert expected, "the two strengths should change some verdicts on the demo"
    report = json.loads((out / "compare.json").read_text())
    assert sorted((d["id"], d["modality"], d["mode"]) for d in report["differing"]) == expected
    for d in report["differing"]:
        key = (d["id"], d["modality"], d["mode"])
        assert d["answers"]["gentle"] == {"verdict": record_verdict(a[key]), "text": a[key]["text"]}
        assert d["answers"]["strong"] == {"verdict": record_verdict(b[key]), "text": b[key]["text"]}
    assert all(key[2] == "fixed" and key[1] == "image" for key in expected)  # text and `off` are uncorrected
    page = (out / "compare.html").read_text()
    assert f"Items whose verdict differs ({len(expected)})" in page
    for item_id, _, _ in expected:
        assert item_id in page
    # the three verdicts of each run, recomputed from its records, with interval and count
    row = next(r for r in report["rates"] if r["key"] == "image/fixed/harmful")
    answered = [r for k, r in a.items() if k[1:] == ("image", "fixed") and r["label"] == "harmful"
                and not r.get("skipped")]
    assert row["gentle"]["n"] == len(answered)
    for verdict in ("refused", "complied", "broken"):
        count = sum(record_verdict(r) == verdict for r in answered)
        assert row["gentle"][verdict]["count"] == count and row["gentle"][verdict]["rate"] == count / len(answered)
    # paired tests: each run's modes against off, and the strong run against the gentle one on shared items
    between = report["paired_between"]["strong vs gentle"]["image/fixed/harmful"]
    pairs = [(record_verdict(b[k]) == "refused", record_verdict(a[k]) == "refused") for k in a
             if k[1:] == ("image", "fixed") and a[k]["label"] == "harmful" and k in b
             and not a[k].get("skipped") and not b[k].get("skipped")]
    assert between["only_a"] == sum(x and not y for x, y in pairs)
    assert between["only_b"] == sum(y and not x for x, y in pairs)
    assert "image/harmful/fixed vs off" in report["paired_within"]["gentle"]
    assert "Paired tests" in page and "McNemar" in page
    assert "Different correction strengths per mode" in page and "Different item sets" not in page


def test_compare_says_when_the_item_sets_differ(demo_runs, tmp_path):
    _, (gentle, _, small) = demo_runs
    comparison = compare_runs([load_run(gentle), load_run(small)])
    assert comparison.shared_items == 6 and any("Different item sets" in n for n in comparison.notes)
    assert {d["id"] for d in comparison.differing} <= {r[0] for r in _records(small)}


def test_compare_refuses_a_folder_that_is_not_a_run(demo_runs, tmp_path, capsys):
    _, (gentle, _, _) = demo_runs
    assert main(["compare", str(gentle), str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a finished evaluation run: missing metrics.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([load_run(gentle)])


def test_run_view_lists_runs_under_its_roots_and_refuses_anything_else(demo_runs):
    from explorer.evaluation.run_view import ROW_HEADERS, list_runs, open_run

    root, (gentle, strong, small) = demo_runs
    names = list_runs([root])
    assert names == sorted(f"{root.name}/{p.name}" for p in (gentle, strong, small))
    view = open_run([root], f"{root.name}/strong")
    assert "model **demo**" in view.summary and "No model is loaded" in view.summary
    assert set(view.figures) == {"Refusal rates", "Separability per layer"}
    records = _records(strong)
    rows = view.rows(modality="image", mode="fixed")
    assert len(rows) == sum(1 for k in records if k[1:] == ("image", "fixed")) and len(rows[0]) == len(ROW_HEADERS)
    row = rows[0]
    record = records[(row[0], "image", "fixed")]
    assert row[9] == record["text"] and row[5] == record_verdict(record)
    # two roots with one folder name are told apart, and a root that is itself a run is listed by its label
    twin = [root, strong]
    assert list_runs([root, root]) == [f"{root.name}#{i}/{p.name}" for i in (1, 2) for p in (gentle, small, strong)]
    assert list_runs(twin)[-1] == strong.name and open_run(twin, strong.name).run.folder == strong.resolve()
    for bad in ("../etc", f"{root.name}/../..", "/etc", f"{root.name}/nope"):
        with pytest.raises(ValueError, match="is not a run listed here; pick one from the list") as refused:
            open_run([root], bad)
        assert str(root.parent) not in str(refused.value)  # names the roots by label, never by path
