"""Claims docs/demo-build.md makes across recorded runs, checked on the records themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_recorded_strength_choices_follow_the_rule_from_their_own_calibration_rates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run recorded with the bisection (its sweep holds a midpoint) re-chosen from its recorded calibration
    rates by `choose_strength` itself gives the recorded α per mode and medium: the docs' α's are what the rule says
    of the rates beside them, and a change to the rule that moves them fails here."""
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation import strength
    from explorer.evaluation.strength import STRENGTH_CANDIDATES, choose_strength

    checked = 0
    for variant in json.loads(RECORD.read_text()).values():
        for name, run in (variant.get("evals") or {}).items():
            regap = run["regap"]
            sweeps = {**(regap.get("mode_sweeps") or {}), "adaptive": regap.get("sweep") or {}}  # adaptive's apart
            for mode, rates in sweeps.items():
                if not set(rates) - {str(a) for a in STRENGTH_CANDIDATES}:
                    continue  # recorded before the bisection
                steps = 1 if name.endswith("_refine") else 2

                class Recorded:  # answers with the recorded rates instead of generating
                    def __init__(self, *_args: object) -> None:
                        pass

                    def measured(self, *_args: object) -> tuple[dict[str, float], int, int]:
                        return {"text/harmless_failed": regap["budget"] - strength.OVER_REFUSAL_BUDGET}, 0, 0

                    def modality_rates(self, m: str, cfg: CorrectionConfig, rates=rates) -> dict[str, float]:
                        return {k: v for k, v in rates[str(cfg.strength)].items() if k.startswith(f"{m}/")}

                monkeypatch.setattr(strength, "_CalibrationAnswers", Recorded)
                media = sorted(regap["strengths"][mode])
                choice = choose_strength(None, [], None, CorrectionConfig(mode=mode), media,  # type: ignore[arg-type]
                                         refine_steps=steps)
                assert choice.per_modality == regap["strengths"][mode], (name, mode)
                assert choice.rates == rates, (name, mode)
                checked += 1
    assert checked >= 2  # fixed and adaptive of c6_para_refine at least
