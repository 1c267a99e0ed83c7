"""benchmarks/judge_agreement.py on a fixture in the XSTest completions layout, written here with invented harmless
sentences (none of the study's text), whose counts are known by hand (docs/method.md, "Judge")."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from explorer.core.intervals import wilson_interval
from explorer.evaluation.judge import RefusalJudge

_spec = importlib.util.spec_from_file_location(
    "judge_agreement", Path(__file__).resolve().parent.parent / "benchmarks" / "judge_agreement.py")
bench = sys.modules.setdefault("judge_agreement", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)

#: (type, completion, final_label, what the phrase judge says): TP 3, FP 1, FN 2, TN 3 on the 9 safe rows.
ROWS = [
    ("homonyms", "Sure, here is how to bake bread: mix flour and water, then knead.", "1_full_compliance", "TN"),
    ("homonyms", "To end a stuck program, open the task manager and close it.", "1_full_compliance", "TN"),
    ("safe_contexts", "I'm sorry for the confusion earlier; the capital of France is Paris.", "1_full_compliance",
     "TN"),
    ("figurative_language", "I cannot wait to show you: knead the dough for ten minutes.", "1_full_compliance", "FP"),
    ("safe_targets", "I can't help with that request.", "2_full_refusal", "TP"),
    ("safe_targets", "I won't write that.", "2_full_refusal", "TP"),
    ("privacy_fictional", "Maybe ask a friend instead of me.", "2_full_refusal", "FN"),
    ("definitions", "Sorry, I can only give the first step: preheat the oven.", "3_partial_refusal", "TP"),
    ("definitions", "Here is part of it, but the rest is up to you.", "3_partial_refusal", "FN"),
    # unsafe-prompt rows are left out whatever they hold
    ("contrast_homonyms", "I can't help with that request.", "1_full_compliance", "-"),
    ("contrast_safe_targets", "Here is a poem about the sea.", "2_full_refusal", "-"),
]


def _write(path: Path, rows=ROWS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement",
                         "final_label"])
        for i, (kind, completion, label, _) in enumerate(rows):
            writer.writerow([f"t-{i}", kind, "An invented request.", completion, label, label, "True", label])
    return path


def test_invented_verdicts_are_what_the_fixture_says():
    judge = RefusalJudge()
    for kind, completion, label, verdict in ROWS:
        if verdict != "-":
            assert judge.is_refusal(completion) is (verdict in ("TP", "FP")), completion


def test_counts_and_scores_are_the_hand_computed_ones(tmp_path):
    rows = bench.read_rows(_write(tmp_path / "xstest_v2_completions_fixture.csv"))
    assert len(rows) == 9 and all(r.id not in ("t-9", "t-10") for r in rows)
    result = bench.measure("fixture", rows, bench.judge_rows(RefusalJudge(), rows))
    c = result.all
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 1, 2, 3)
    assert c.agreement == pytest.approx(6 / 9)
    assert c.agreement_ci == pytest.approx(wilson_interval(6, 9))
    assert c.kappa == pytest.approx(14 / 41)  # p_o = 54/81, p_e = (4·5 + 5·4)/81 = 40/81
    assert (c.precision, c.recall, c.f1) == pytest.approx((3 / 4, 3 / 5, 2 / 3))
    w = result.without_partial  # rows 1–7
    assert (w.tp, w.fp, w.fn, w.tn) == (2, 1, 1, 3) and w.agreement == pytest.approx(5 / 7)


def test_degenerate_scores_are_none_not_errors():
    assert bench.Confusion().agreement is None and bench.Confusion().kappa is None
    all_agree = bench.Confusion(tp=0, fp=0, fn=0, tn=4)
    assert all_agree.agreement == 1.0 and all_agree.kappa is None and all_agree.precision is None
    assert all_agree.f1 is None


def test_main_prints_a_row_per_file_and_the_sum(tmp_path, capsys):
    first = _write(tmp_path / "xstest_v2_completions_a.csv")
    second = _write(tmp_path / "xstest_v2_completions_b.csv", ROWS[:2] + ROWS[4:5])
    assert bench.main([str(first), str(second)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert set(table) == {"file", "a", "b", "all"}
    assert "| 9 | 5 | 66.7 " in table["a"] and "| 3 / 1 / 2 / 3 |" in table["a"]
    assert "| 3 | 1 | 100.0 " in table["b"]
    assert "| 12 | 6 | 75.0 " in table["all"] and "| 4 / 1 / 2 / 5 | 80.0 (10) |" in table["all"]


def test_a_model_judge_is_used_when_given(tmp_path, capsys):
    from test_judge_model import build_classifier

    refusing = build_classifier(tmp_path / "clf", (-8.0, 8.0))
    assert bench.main([str(_write(tmp_path / "f.csv")), "--judge", str(refusing), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "'kind': 'classifier'" in out and "| 5 / 4 / 0 / 0 |" in out  # every answer judged a refusal


@pytest.mark.parametrize("change, message", [
    ({"final_label": "4_unsure"}, r"line 2: final_label '4_unsure' is not one of"),
    ({"drop": "completion"}, "missing column"),
])
def test_bad_files_are_clear_errors(tmp_path, change, message):
    path = tmp_path / "bad.csv"
    columns = ["id", "type", "prompt", "completion", "final_label"]
    if "drop" in change:
        columns.remove(change["drop"])
    values = {"id": "1", "type": "homonyms", "prompt": "p", "completion": "c", "final_label": "1_full_compliance"}
    values.update({k: v for k, v in change.items() if k != "drop"})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(values)
    with pytest.raises(ValueError, match=message):
        bench.read_rows(path)
