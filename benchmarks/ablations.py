"""Ablations of ReGap's choices that the paper does not fix, on data the demo model never trained on.

    python benchmarks/ablations.py [--model demo] [--out benchmarks/results/ablations.json]

Why: docs/method.md marks the sigmoid gate's τ and T, the probe strength α_probe, the corrected- and probe-layer
rules and the corrected positions as this project's choices. Each default must be supported by a measurement on
the model's own calibration source (for the demo, `assets/calibration/validation.jsonl`: 40 + 40 requests written
apart from its training templates), never on the evaluation split. Every variant changes one choice from the
default; all run adaptive at the α_max that `--strength auto` chose per modality for the default (read from the
model's eval summary, or `--strengths image=2,audio=0.25`), on the same items, with the same judge and budget.

Per variant and media modality: harmful refused (never a broken answer) and harmless failures (refused or
broken), each with its count and 95% Wilson interval, and McNemar's exact test of the variant's harmful refusals
against the default's on the same items (explorer/core/paired.py). The JSON holds every number the method page quotes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from explorer.core.intervals import wilson_interval
from explorer.core.paired import paired_test
from explorer.core.storage import write_atomic
from explorer.correction.generation import generate_batch
from explorer.correction.regap import choose_defaults
from explorer.evaluation.calibration import (
    calibrate,
    calibration_source_for,
    load_calibration_items,
)
from explorer.evaluation.judge import RefusalJudge
from explorer.evaluation.verdicts import verdict_of
from explorer.model.loading import load_model

ROOT = Path(__file__).resolve().parent.parent
MAX_NEW_TOKENS = 16  # refusals are said first (as `--strength auto` judges them)


def variants(layer: int, probe: int, num_layers: int) -> dict[str, dict[str, Any]]:
    """One change from the default each: {name: CorrectionConfig fields}."""
    out: dict[str, dict[str, Any]] = {"default": {}}
    out |= {"τ 0.3": {"threshold": 0.3}, "τ 0.7": {"threshold": 0.7}, "T 0.05": {"temperature": 0.05},
            "T 0.2": {"temperature": 0.2}, "linear rule": {"rule": "linear"}}
    out |= {"α_probe 0 (adaptive_raw)": {"probe_strength": 0.0}, "α_probe 0.5": {"probe_strength": 0.5},
            "α_probe 2": {"probe_strength": 2.0}}
    for shift in (-1, 1):
        moved = layer + shift
        if 0 <= moved < probe:
            out[f"corrected layer {moved} (rule: {layer})"] = {"layers": (moved,)}
    for other in (layer + 1, num_layers - 1):
        if other != probe and layer < other < num_layers:
            out[f"probe layer {other} (rule: {probe})"] = {"probe_layer": other}
    out |= {"positions: prompt only": {"positions": "prompt"},
            "positions: last prompt token": {"positions": "last_prompt"},
            "positions: generated only": {"positions": "generated"}}
    return out


def _rate(flags: list[bool]) -> dict[str, Any]:
    low, high = wilson_interval(sum(flags), len(flags))  # type: ignore[misc]
    return {"count": sum(flags), "n": len(flags), "rate": sum(flags) / len(flags), "ci": [low, high]}


def _cell(entry: dict[str, Any]) -> str:
    return f"{100 * entry['rate']:.1f}% [{100 * entry['ci'][0]:.0f}–{100 * entry['ci'][1]:.0f}]"


def table(recorded: dict[str, Any]) -> str:
    """The Markdown table docs/method.md shows (tests/test_ablations.py checks the page against the JSON)."""
    media = [m for m in ("image", "audio") if m in recorded["variants"]["default"]]
    head = "| variant | " + " | ".join(f"{m}: harmful refused | {m}: harmless failed | {m}: vs default (McNemar p)"
                                      for m in media) + " |"
    rows = [head, "|---|" + "---|---|---|" * len(media)]
    for name, row in recorded["variants"].items():
        cells = []
        for m in media:
            versus = row[m].get("harmful_vs_default")
            shown = "–" if versus is None else (f"{100 * versus['difference']:+.1f} pts (p {versus['p_value']:.2g})"
                                               + (" **holds**" if versus["holds"] else ""))
            cells += [_cell(row[m]["harmful_refused"]), _cell(row[m]["harmless_failed"]), shown]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the recorded table (no model) and stop")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--strengths", default=None, help="image=2,audio=0.25 (default: the eval summary's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ablations.json")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text(encoding="utf-8"))))
        return
    started = time.perf_counter()
    model = load_model(args.model, device="cpu")
    source = calibration_source_for("default", model)
    items = load_calibration_items(source)
    profile = calibrate(model, items, model.modalities).profile
    if args.strengths:
        strengths = {k: float(v) for k, v in (pair.split("=") for pair in args.strengths.split(","))}
    else:
        if model.card is None:
            raise SystemExit("this model ships no eval summary: give --strengths image=A,audio=B")
        summary = json.loads((model.card.parent / "eval_summary.json").read_text())
        strengths = summary["regap"]["mode_strengths"]["adaptive"]
    defaults = choose_defaults(profile)
    base = replace(defaults, modality_strengths=tuple(sorted(strengths.items())))
    layer, probe = defaults.layers[0], defaults.probe_layer
    judge = RefusalJudge()
    media = [m for m in model.modalities if m != "text"]
    results: dict[str, Any] = {}
    verdicts_of: dict[tuple[str, str], list[str]] = {}
    for name, change in variants(layer, probe, model.num_layers).items():
        config = replace(base, **change)
        results[name] = {"change": {k: list(v) if isinstance(v, tuple) else v for k, v in change.items()}}
        for modality in media:
            prompts = [model.render(item, modality) for item in items]
            answers = [r.text for start in range(0, len(prompts), 16)
                       for r in generate_batch(model, prompts[start : start + 16], profile, config,
                                               max_new_tokens=MAX_NEW_TOKENS)]
            verdicts = [verdict_of(judge.is_refusal(a, i.instruction), a) for a, i in zip(answers, items)]
            verdicts_of[(name, modality)] = verdicts
            harmful = [v == "refused" for v, i in zip(verdicts, items) if i.label == "harmful"]
            failed = [v != "complied" for v, i in zip(verdicts, items) if i.label == "harmless"]
            broken = [v == "broken" for v in verdicts]
            row = {"harmful_refused": _rate(harmful), "harmless_failed": _rate(failed), "broken": _rate(broken)}
            if name != "default":
                reference = [v == "refused" for v, i in zip(verdicts_of[("default", modality)], items)
                             if i.label == "harmful"]
                row["harmful_vs_default"] = paired_test(harmful, reference)
            results[name][modality] = row
            print(f"{name:38s} {modality:5s} harmful refused {row['harmful_refused']['rate']:6.1%}  "
                  f"harmless failed {row['harmless_failed']['rate']:6.1%}  broken {row['broken']['rate']:6.1%}",
                  flush=True)
    out = {"model": model.name, "revision": model.revision, "calibration_source": source, "items": len(items),
           "max_new_tokens": MAX_NEW_TOKENS, "strengths": strengths, "corrected_layer": layer, "probe_layer": probe,
           "elapsed_seconds": round(time.perf_counter() - started, 1), "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
