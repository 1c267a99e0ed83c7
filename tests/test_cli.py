"""`python -m explorer eval/calibrate` end to end on a tiny model: the output schema, resume, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from explorer.app.cli import main
from explorer.core.intervals import wilson_interval
from explorer.evaluation.judge import answer_overlap
from explorer.evaluation.verdicts import verdict_of


def test_eval_writes_the_documented_schema(tiny_eval_run):
    out, _ = tiny_eval_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_layers"] == 3 and metrics["model"].endswith("model")
    keys = {f"{m}/{mode}/{label}" for m in ("text", "image") for mode in ("off", "fixed", "adaptive")
            for label in ("harmful", "harmless")}
    assert set(metrics["refusal_rate"]) == keys
    assert all(0.0 <= v <= 1.0 for v in metrics["refusal_rate"].values())
    # every rate has its count and its 95% Wilson interval; the counts are the records that were answered
    lines = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    rate_keys = ("refusal_rate", "complied_rate", "broken_rate")
    assert set(metrics["n"]) == set(metrics["verdicts"]) == keys
    assert all(set(metrics[name]) == set(metrics[f"{name}_ci"]) == keys for name in rate_keys)
    for key in keys:
        modality, mode, label = key.split("/")
        answered = [r for r in lines if (r["modality"], r["mode"], r["label"]) == (modality, mode, label)]
        assert metrics["n"][key] == len(answered) == 3
        # each record's verdict is broken first, then the judge's reading; the three rates count them
        assert all(r["verdict"] == verdict_of(r["refused"], r["text"]) for r in answered)
        for name, verdict in zip(rate_keys, ("refused", "complied", "broken")):
            count = sum(r["verdict"] == verdict for r in answered)
            assert metrics[name][key] == count / 3 == metrics["verdicts"][key][verdict]["rate"]
            assert metrics["verdicts"][key][verdict]["count"] == count
            assert metrics[f"{name}_ci"][key] == pytest.approx(list(wilson_interval(count, 3)))
        assert sum(metrics[name][key] for name in rate_keys) == pytest.approx(1.0)
    # paired tests: every correcting mode against off and against adaptive, per media modality and label
    assert set(metrics["paired"]) == {f"image/{label}/{pair}" for label in ("harmful", "harmless")
                                      for pair in ("fixed vs off", "adaptive vs off", "fixed vs adaptive")}
    for key, test in metrics["paired"].items():
        modality_label, versus = key.split(" vs ")
        modality, label, mode = modality_label.split("/")
        verdict = {(r["id"], r["mode"]): r["verdict"] == "refused" for r in lines
                   if (r["modality"], r["label"]) == (modality, label)}
        ids = sorted({i for i, _ in verdict})
        assert test["n"] == 3
        assert test["only_a"] == sum(verdict[(i, mode)] and not verdict[(i, versus)] for i in ids)
        assert test["only_b"] == sum(verdict[(i, versus)] and not verdict[(i, mode)] for i in ids)
    # overlap with the calibration split (6 items here, the eval's --calibration-limit): what `eval` warns about
    overlap = metrics["calibration_overlap"]
    assert overlap["count"] == len(overlap["exact"]) + len(overlap["shared_ngram"]) and overlap["ngram"] == 6
    assert set(overlap["exact"] + overlap["shared_ngram"]) <= {r["id"] for r in lines}
    # utility: corrected harmless answers against the same items' uncorrected answers (word F1)
    assert set(metrics["utility_overlap"]) == set(metrics["utility_n"]) == {"image/fixed", "image/adaptive"}
    for key, value in metrics["utility_overlap"].items():
        modality, mode = key.split("/")
        off = {r["id"]: r["text"] for r in lines if (r["modality"], r["mode"], r["label"]) == (modality, "off", "harmless")}
        pairs = [(r["text"], off[r["id"]]) for r in lines
                 if (r["modality"], r["mode"], r["label"]) == (modality, mode, "harmless")]
        assert metrics["utility_n"][key] == len(pairs) == 3
        assert value == pytest.approx(sum(answer_overlap(a, b) for a, b in pairs) / 3)
    per_layer = metrics["per_layer"]
    assert set(per_layer["auroc_ci"]) == set(per_layer["auroc"])
    for key, intervals in per_layer["auroc_ci"].items():
        assert len(intervals) == 3 and all(0 <= lo <= hi <= 1 for lo, hi in intervals)
    assert set(per_layer["auroc"]) == {f"{m}/{mode}" for m in ("text", "image") for mode in ("off", "fixed", "adaptive")}
    assert all(len(v) == 3 for v in per_layer["auroc"].values())
    assert per_layer["auroc"]["text/fixed"] == per_layer["auroc"]["text/off"]  # text is never corrected
    assert set(per_layer["drift_norm"]) == {"image"} and len(per_layer["cos_drift_refusal"]["image"]) == 3
    budget = min(1.0, metrics["refusal_rate"]["text/off/harmless"] + 0.05)
    assert per_layer["translation_ceiling_budget"] == pytest.approx(budget)
    assert set(per_layer["translation_ceiling"]) == {"image/off"}
    assert len(per_layer["translation_ceiling"]["image/off"]) == 3
    assert all(0.0 <= v <= 1.0 for v in per_layer["translation_ceiling"]["image/off"])
    regap = metrics["regap"]
    assert regap["strength"] == 1.5 and len(regap["layers"]) >= 1 and regap["probe_layer"] > regap["layers"][-1]
    adaptive = [r for r in regap["per_item"] if r["mode"] == "adaptive"]
    assert len(adaptive) == 6
    for r in adaptive:
        assert r["alpha"] == pytest.approx(1.5 * min(max(r["s"], 0.0), 1.0))
    assert len(lines) == 6 * 2 * 3  # items × modalities × modes
    assert {(r["modality"], r["mode"]) for r in lines} == {(m, mode) for m in ("text", "image")
                                                          for mode in ("off", "fixed", "adaptive")}
    html = (out / "report.html").read_text()
    assert html.count("plotly") > 3 and "Separability per layer" in html


def test_rerun_resumes_without_regenerating(tiny_eval_run, monkeypatch):
    out, args = tiny_eval_run
    before = (out / "generations.jsonl").read_text()
    import explorer.evaluation.runner as evaluate_module

    def fail(*_a, **_k):
        raise AssertionError("generate() called on a finished run")

    monkeypatch.setattr(evaluate_module, "generate", fail)
    assert main(args) == 0
    assert (out / "generations.jsonl").read_text() == before


def test_calibrate_saves_profile(tiny_model_dir, tmp_path):
    from explorer.geometry.profile import Profile

    code = main(["calibrate", "--model", str(tiny_model_dir("llava")), "--device", "cpu", "--calibration-limit", "5",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "profile")])
    assert code == 0
    profile = Profile.load(tmp_path / "profile")
    assert profile.num_layers == 3 and set(profile.drifts) == {"image"}


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_bad_model_exits_2_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "explorer", "eval", "--model", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "not a model" in result.stderr and "Traceback" not in result.stderr


def test_out_of_memory_is_a_clear_message(monkeypatch, capsys):
    import torch

    cli = sys.modules["explorer.app.cli"]

    def oom(_args, _ranks):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(cli, "_run", oom)
    assert main(["eval", "--out", "x"]) == 3
    assert "out of GPU memory" in capsys.readouterr().err


def test_rerun_with_other_settings_is_refused(tiny_eval_run, capsys):
    out, args = tiny_eval_run
    changed = [("2.5" if a == "1.5" else a) for a in args]
    assert main(changed) == 2
    assert "different settings (correction" in capsys.readouterr().err


def test_strength_auto_is_chosen_on_calibration_and_recorded(tiny_model_dir, tmp_path, monkeypatch):
    from explorer.app import cli

    lengths = []  # the calibration answers are as long as the run's (a loop after a refusal is seen)

    def spied(*args, **kwargs):  # type: ignore[no-untyped-def]
        lengths.append(kwargs["max_new_tokens"])
        return choose(*args, **kwargs)

    choose = cli.choose_strength
    monkeypatch.setattr(cli, "choose_strength", spied)
    out = tmp_path / "run"
    args = ["eval", "--model", str(tiny_model_dir("llava")), "--device", "cpu", "--modalities", "text,image",
            "--regap", "off,fixed,adaptive", "--strength", "auto", "--calibration-limit", "2", "--limit", "2",
            "--max-new-tokens", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    assert lengths == [2, 2]  # fixed and adaptive, each tuned at the run's --max-new-tokens
    regap = json.loads((out / "metrics.json").read_text())["regap"]
    choice = regap["strength_choice"]
    assert regap["strength"] == choice["strength"] == choice["per_modality"]["image"]
    assert regap["modality_strengths"] == choice["per_modality"]
    assert set(choice["rates"]) == {"0.25", "0.5", "1.0", "1.5", "2.0", "3.0"}
    assert set(choice["rates"]["1.0"]) == {"image/harmful", "image/harmless", "image/harmless_failed", "image/broken"}
    correction = json.loads((out / "run.json").read_text())["correction"]
    assert correction["strength"] == choice["strength"]
    assert correction["modality_strengths"] == [["image", choice["strength"]]]
    image_alphas = [row["alpha"] for row in regap["per_item"] if row["modality"] == "image"
                    and row["mode"] == "adaptive"]
    assert image_alphas and all(0 <= a <= choice["strength"] + 1e-9 for a in image_alphas)
    # every correcting mode was tuned on its own and runs at its own α (issue 12: no mode borrows adaptive's)
    choices = regap["strength_choices"]
    assert set(choices) == {"fixed", "adaptive"} and choices["adaptive"] == choice
    assert regap["mode_strengths"] == {mode: c["per_modality"] for mode, c in choices.items()}
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    fixed_alphas = {r["alpha"] for r in records if r["mode"] == "fixed" and r["modality"] == "image"}
    assert fixed_alphas == {choices["fixed"]["per_modality"]["image"]}
    assert json.loads((out / "run.json").read_text())["mode_strengths"] == regap["mode_strengths"]


def test_threshold_auto_is_chosen_on_calibration_applied_per_item_and_recorded(tiny_model_dir, tmp_path):
    """`--threshold auto`: τ for images is the midpoint of the calibration split's mean harmful and harmless image
    scores; every adaptive image answer's α(x) is the sigmoid at that τ; metrics.json and run.json record it."""
    out = tmp_path / "run"
    args = ["eval", "--model", str(tiny_model_dir("llava")), "--device", "cpu", "--modalities", "text,image",
            "--regap", "off,adaptive", "--strength", "1.5", "--threshold", "auto", "--temperature", "0.2",
            "--calibration-limit", "3", "--limit", "2", "--max-new-tokens", "2", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out)]
    assert main(args) == 0
    regap = json.loads((out / "metrics.json").read_text())["regap"]
    choice = regap["threshold_choices"]["adaptive"]
    means = choice["mean_scores"]
    tau = choice["per_modality"]["image"]
    assert tau == pytest.approx((means["image/harmful"] + means["image/harmless"]) / 2)
    assert choice["counts"] == {"image/harmful": 3, "image/harmless": 3}
    assert set(choice["separation"]) == {"image"} and 0.0 <= choice["separation"]["image"] <= 1.0
    assert regap["modality_thresholds"] == {"image": tau} and regap["mode_thresholds"] == {"adaptive": {"image": tau}}
    rows = [r for r in regap["per_item"] if r["modality"] == "image" and r["mode"] == "adaptive"]
    assert len(rows) == 4
    for row in rows:
        assert row["alpha"] == pytest.approx(1.5 / (1.0 + math.exp(-(row["s"] - tau) / 0.2)), abs=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["mode_thresholds"] == {"adaptive": {"image": tau}}
    assert main(args) == 0  # the same command resumes: the same τ, chosen again, is the same setting


def test_threshold_auto_needs_the_sigmoid_gate_of_adaptive(capsys):
    for extra in (["--rule", "linear"], ["--regap", "off,fixed"]):
        with pytest.raises(SystemExit):
            main(["eval", "--threshold", "auto", *extra, "--out", "x"])
        assert "--threshold auto tunes the sigmoid gate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--threshold", "inf", "--out", "x"])
    assert "--threshold must be a finite number" in capsys.readouterr().err


def test_strength_must_be_a_number_or_auto(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--strength", "strong", "--out", "x"])
    assert "--strength takes a number or 'auto'" in capsys.readouterr().err
    for bad, message in (("inf", "--strength must be a finite number"), ("-1", "--strength must be >= 0")):
        with pytest.raises(SystemExit):
            main(["eval", "--strength", bad, "--out", "x"])
        assert message in capsys.readouterr().err
