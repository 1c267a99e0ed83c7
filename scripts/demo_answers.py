"""Collect real answers of the demo model for the verdict rule's test (tests/data/demo_answers.jsonl).

    .venv/bin/python scripts/demo_answers.py [--out tests/data/demo_answers.jsonl]

Why: the broken-answer rule (explorer/evaluation/verdicts.py) must hold on what a model actually says, not only on invented
strings. The demo model answers requests of the validation file (never trained on) as text, image and audio,
plain and with `fixed` corrections far stronger than any default (α 2–12 at its corrected layer), which break its
output in the ways a strong steering vector does. Each answer is written once (duplicates dropped) with the label a
person gave it by reading it (`expected`: refused, complied or broken; `rule_misses`: the person's reading and
the rule disagree, a known limit of the rule such as word salad); a rerun keeps the labels of answers it finds
again and leaves new ones unlabelled ("") for a person to label.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from explorer.correction.generation import generate_batch
from explorer.correction.regap import CorrectionConfig
from explorer.evaluation.calibration import (
    calibrate,
    calibration_source_for,
    load_calibration_items,
)
from explorer.model.loading import load_model

STRENGTHS = (0.0, 2.0, 4.0, 8.0, 12.0)
PER_LABEL = 6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/demo_answers.jsonl"))
    args = parser.parse_args(argv)
    labelled = {}
    if args.out.is_file():
        for line in args.out.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            labelled[row["answer"]] = (row.get("expected", ""), row.get("rule_misses", False))
    model = load_model("demo", device="cpu")
    calibration = load_calibration_items(calibration_source_for("default", model))
    profile = calibrate(model, calibration, model.modalities).profile
    requests = [i for label in ("harmful", "harmless") for i in [c for c in calibration if c.label == label][:PER_LABEL]]
    rows, seen = [], set()
    for modality in model.modalities:
        prompts = [model.render(item, modality) for item in requests]
        for alpha in STRENGTHS:
            config = CorrectionConfig(mode="off") if alpha == 0 else CorrectionConfig(mode="fixed", strength=alpha)
            for item, result in zip(requests, generate_batch(model, prompts, profile, config, max_new_tokens=32)):
                if result.text in seen:
                    continue
                seen.add(result.text)
                rows.append({"request": item.instruction, "label": item.label, "modality": modality,
                             "mode": config.mode, "alpha": alpha, "answer": result.text,
                             "expected": labelled.get(result.text, ("", False))[0],
                             "rule_misses": labelled.get(result.text, ("", False))[1]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} answers to {args.out} ({sum(not r['expected'] for r in rows)} unlabelled)")


if __name__ == "__main__":
    main()
