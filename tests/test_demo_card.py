"""Tests for explorer.demo_model.card: the card never pairs a checkpoint with another checkpoint's evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.demo_model.config import DemoConfig

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo_model"

shipped = pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="demo model not trained yet")


@shipped
def test_card_refuses_an_eval_run_of_other_weights(tmp_path: Path) -> None:
    from explorer.demo_model.card import main as card_main

    (tmp_path / "run.json").write_text(json.dumps({"revision": "other-weights"}))
    (tmp_path / "metrics.json").write_text("{}")
    before = (DEMO / "README.md").read_text()
    with pytest.raises(SystemExit, match="evaluated revision other-weights"):
        card_main([str(DEMO), "--eval", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a usable"):
        card_main([str(DEMO), "--eval", str(tmp_path / "missing")])
    assert (DEMO / "README.md").read_text() == before


def test_card_says_how_much_better_the_strength_looked_on_the_calibration_it_trained_on() -> None:
    """The α chosen on calibration is compared with the evaluation split's rate at that α; a recipe that does not
    train on calibration gets no such caveat."""
    from explorer.demo_model.card import _optimism_note

    regap = {"strength_choice": {"per_modality": {"image": 2.0, "audio": 1.0},
                                 "rates": {"1.0": {"audio/harmful": 0.8}, "2.0": {"image/harmful": 0.75}}}}
    rate = {"image/adaptive/harmful": 0.5, "audio/adaptive/harmful": 0.7}
    note = _optimism_note(regap, rate, DemoConfig())
    assert "image 75.0% on calibration vs 50.0% here; audio 80.0% on calibration vs 70.0% here" in note
    assert _optimism_note(regap, rate, DemoConfig(calibration_share=0.0)) == ""
    assert _optimism_note({}, rate, DemoConfig()) == ""
    assert _optimism_note(regap, {}, DemoConfig()) == ""  # no adaptive run to compare with: no dangling sentence


@shipped
def test_card_is_rendered_from_its_template_and_the_recorded_numbers(tmp_path: Path) -> None:
    """The shipped card is exactly what the template gives for the recorded training log, measurements and eval
    summary: nobody edited numbers by hand, and the template and the gate table render the same card again."""
    from explorer.demo_model.card import write_card

    log = json.loads((DEMO / "training_log.json").read_text())
    cfg = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in log["config"].items()})
    measured = json.loads((DEMO / "measurements.json").read_text())
    summary = json.loads((DEMO / "eval_summary.json").read_text())
    write_card(tmp_path, cfg, log["times_s"], log["params"], measured, summary)
    assert (tmp_path / "README.md").read_text() == (DEMO / "README.md").read_text()
