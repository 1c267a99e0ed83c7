"""Command line: `python -m explorer calibrate|eval|compare ...` (a stable contract; see README "CLI").

A thin layer: it parses arguments, calls `load_model`, `calibrate` and `evaluate`, and turns the library's
`ValueError`s into one clear line and exit code 2. Ctrl-C exits 130; rerunning the same command resumes. `eval`
holds its --out from the start (explorer.core.run_lock): a second eval on the same folder exits 2 at once, before
loading anything.
Started by `torchrun --nproc-per-node N -m explorer …`, each process does its share (explorer.core.distributed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence, get_args

import torch

from explorer.app.model_options import add_model_arguments
from explorer.core.distributed import Ranks, ranks_from_env, start, stop
from explorer.core.run_lock import hold_run
from explorer.core.vocab import LABELS, Modality, Mode, parse_layer_window
from explorer.correction.regap import CorrectionConfig, PositionScope, Rule
from explorer.evaluation.calibration import (
    ThresholdChoice,
    calibrate,
    calibration_source_for,
    choose_threshold,
    load_calibration_items,
)
from explorer.evaluation.strength import StrengthChoice, choose_strength
from explorer.evaluation.compare import compare_runs, load_run, write_comparison
from explorer.evaluation.judge import Judge
from explorer.evaluation.judge_model import JUDGE_FORMATS, load_judge
from explorer.evaluation.runner import EvalSettings, evaluate
from explorer.inputs.data import Instruction
from explorer.inputs.importers import FORMATS, load_prompt_sources
from explorer.inputs.overlap import calibration_overlap
from explorer.model.capture import CaptureSettings, Pooling
from explorer.geometry.profile import Profile
from explorer.model.loading import load_model
from explorer.model.models import LoadedModel

__all__ = ["main"]


def _csv(kind: object, name: str):
    allowed = get_args(kind)

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{name}: {', '.join(bad) or 'empty'} not in {', '.join(allowed)}")
        return values

    return parse


def _layer_window(text: str) -> str:
    """Checks the syntax now (the range needs the model: checked right after it loads); keeps the text."""
    try:
        parse_layer_window(text, num_layers=1 << 20)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--layers: {err}") from err
    return text


def _number_or_auto(flag: str, text: str, least: float | None = None) -> float | str:
    """`auto`, or a finite number (at least `least` when given), for `flag`'s parser."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{flag} takes a number or 'auto', got {text!r}") from err
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{flag} must be a finite number, got {text!r}")
    if least is not None and value < least:
        raise argparse.ArgumentTypeError(f"{flag} must be >= {least:g}, got {value}")
    return value


def _strength(text: str) -> float | str:
    """A non-negative number, or `auto` (α_max chosen on the calibration split)."""
    return _number_or_auto("--strength", text, least=0)


def _threshold(text: str) -> float | str:
    """A finite number, or `auto` (τ chosen per modality on the calibration split)."""
    return _number_or_auto("--threshold", text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explorer", description="Safety Geometry Explorer")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        add_model_arguments(p)
        p.add_argument("--pooling", default="last", choices=get_args(Pooling))
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--cache-dir", default="default",
                       help="state and profile cache (default: $SGE_CACHE_DIR or ~/.cache/safety-geometry-explorer)")
        p.add_argument("--modalities", type=_csv(Modality, "--modalities"), default=None,
                       help="comma list of text,image,audio (default: all the model accepts)")

    cal = sub.add_parser("calibrate", help="capture the calibration set and build/cache the profile")
    model_args(cal)
    cal.add_argument("--out", type=Path, default=None, help="also save the profile to this folder")

    ev = sub.add_parser("eval", help="refusal / over-refusal with and without ReGap")
    model_args(ev)
    ev.add_argument("--prompts", action="append", default=None,
                    help="'builtin' (the evaluation split), a JSONL/CSV file, or FORMAT:PATH for a published "
                         f"benchmark ({', '.join(FORMATS)}); repeat to combine sets (README 'Benchmarks')")
    ev.add_argument("--regap", type=_csv(Mode, "--regap"), default=("off", "fixed", "adaptive"))
    ev.add_argument("--strength", type=_strength, default=1.0,
                    help="α (fixed) or α_max (adaptive), or 'auto': chosen on the calibration split (see README)")
    ev.add_argument("--layers", type=_layer_window, default="", help="corrected layer N or window A-B (default: calibrated)")
    ev.add_argument("--probe-layer", type=int, default=None, help="adaptive probe layer (default: calibrated)")
    ev.add_argument("--positions", default="all", choices=get_args(PositionScope))
    ev.add_argument("--rule", default="sigmoid", choices=get_args(Rule))
    ev.add_argument("--probe-strength", type=float, default=1.0, help="α of adaptive's probe pass")
    ev.add_argument("--threshold", type=_threshold, default=0.5,
                    help="τ of the sigmoid rule, or 'auto': per modality, halfway between the mean self-rectification "
                         "scores of the calibration split's harmful and harmless inputs (adaptive, sigmoid)")
    ev.add_argument("--temperature", type=float, default=0.1, help="T of the sigmoid rule")
    ev.add_argument("--max-new-tokens", type=int, default=48)
    ev.add_argument("--limit", type=int, default=None, help="at most N items per label")
    ev.add_argument("--judge", default="phrases",
                    help="'phrases' (default: the phrase judge) or a refusal classifier / chat model, local folder or "
                         "Hugging Face id (docs/method.md, 'Judge')")
    ev.add_argument("--judge-refusal-label", default=None,
                    help="the --judge classifier's label that means refusal "
                         "(default: the one with 'refus' or 'reject')")
    ev.add_argument("--judge-format", default="question", choices=JUDGE_FORMATS,
                    help="how a chat --judge is asked: our yes/no question with the request and the answer, or "
                         "WildGuard's own (request, response) format")
    ev.add_argument("--out", type=Path, required=True)

    cmp = sub.add_parser("compare", help="one HTML report comparing finished eval run folders (no model loaded)")
    cmp.add_argument("runs", nargs="+", type=Path, help="two or more run folders written by `eval --out`")
    cmp.add_argument("--out", type=Path, required=True, help="folder for compare.html and compare.json")
    return parser


def _run(args: argparse.Namespace, ranks: Ranks) -> int:
    """One process's part of the command; under torchrun, `ranks` says which part (see explorer.core.distributed)."""
    if args.command == "compare":
        path = write_comparison(compare_runs([load_run(folder) for folder in args.runs]), args.out)
        print(json.dumps({"out": str(path)}))
        return 0
    if ranks.active and args.device_map:
        raise ValueError("--device-map splits one model over several GPUs; under torchrun each process holds a "
                         "whole model on its own GPU: drop --device-map, or run one process")
    # the prompt sets first, so a bad file or layout fails in seconds, before the model loads
    items = load_prompt_sources(args.prompts or ["builtin"]) if args.command == "eval" else []
    device = start(ranks, args.device)
    if args.command == "eval":  # --out is this run's from here on: a second eval on it is refused at once
        with hold_run(args.out, ranks):
            return _run_model(args, ranks, items, device)
    return _run_model(args, ranks, items, device)


def _run_model(args: argparse.Namespace, ranks: Ranks, items: list[Instruction], device: str) -> int:
    """Load the model, calibrate, and for `eval` evaluate `items` (the caller holds --out)."""
    model = load_model(args.model, device=device, dtype=args.dtype, device_map=args.device_map,
                       trust_remote_code=args.trust_remote_code)
    modalities = args.modalities or model.modalities
    # before any long work, so a bad judge fails in seconds (`calibrate` has no --judge: the phrase judge, unused)
    judge = load_judge(getattr(args, "judge", "phrases"), refusal_label=getattr(args, "judge_refusal_label", None),
                       device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                       batch_size=args.batch_size, prompt_format=getattr(args, "judge_format", "question"))
    layers = parse_layer_window(getattr(args, "layers", ""), model.num_layers)  # before any long work
    settings = CaptureSettings(pooling=args.pooling, batch_size=args.batch_size)
    cal_items = load_calibration_items(calibration_source_for(args.calibration, model), args.calibration_limit)
    calibration = calibrate(model, cal_items, modalities, settings, args.cache_dir, progress=True, ranks=ranks)
    profile = calibration.profile
    if args.command == "calibrate":
        if not ranks.is_main:
            return 0
        if args.out:
            profile.save(args.out)
        print(json.dumps({"model": model.name, "num_layers": model.num_layers, "items": len(cal_items),
                          "auroc": {m: [round(x, 3) for x in v] for m, v in profile.metrics["auroc"].items()}}))
        return 0
    if args.limit is not None:
        items = [i for label in LABELS for i in [x for x in items if x.label == label][: args.limit]]
    overlap = calibration_overlap(items, cal_items)
    if overlap["count"] and ranks.is_main:
        print(f"warning: {overlap['count']} of {len(items)} evaluation items overlap the calibration set "
              f"({len(overlap['exact'])} with the same words, {len(overlap['shared_ngram'])} sharing a run of "
              f"{overlap['ngram']} words; first: {', '.join((overlap['exact'] + overlap['shared_ngram'])[:5])}): "
              "they measure the fit, not the method (metrics.json, calibration_overlap)", file=sys.stderr)
    correction = CorrectionConfig(mode="adaptive", strength=1.0 if args.strength == "auto" else args.strength,
                                  layers=layers, probe_layer=args.probe_layer, positions=args.positions,
                                  rule=args.rule, probe_strength=args.probe_strength,
                                  threshold=0.5 if args.threshold == "auto" else args.threshold,
                                  temperature=args.temperature)
    threshold_choices, strength_choices = _tune_on_calibration(args, model, cal_items, profile, correction,
                                                               modalities, judge, ranks)
    if "adaptive" in threshold_choices:
        correction = threshold_choices["adaptive"].apply(correction)
    if "adaptive" in strength_choices:
        correction = strength_choices["adaptive"].apply(correction)
    eval_settings = EvalSettings(modalities=tuple(modalities), modes=tuple(args.regap), correction=correction,
                                 max_new_tokens=args.max_new_tokens, strength_choices=strength_choices,
                                 threshold_choices=threshold_choices,
                                 batch_size=args.batch_size, judge=judge,
                                 calibration_source=calibration_source_for(args.calibration, model),
                                 calibration_overlap=overlap)
    metrics = evaluate(model, items, profile, eval_settings, args.out, ranks=ranks)
    if ranks.is_main:
        print(json.dumps({"out": str(args.out), "refusal_rate": metrics["refusal_rate"],
                          "elapsed_seconds": metrics["elapsed_seconds"]}, indent=1))
    return 0


def _tune_on_calibration(args: argparse.Namespace, model: LoadedModel, cal_items: list[Instruction], profile: Profile,
                         correction: CorrectionConfig, modalities: Sequence[Modality], judge: Judge,
                         ranks: Ranks) -> tuple[dict[str, ThresholdChoice], dict[str, StrengthChoice]]:
    """`--threshold auto` and `--strength auto`, each correcting mode on its own and on the calibration split only:
    the gate's τ first (adaptive modes), so that α_max is then chosen for the gate as it will run."""
    thresholds: dict[str, ThresholdChoice] = {}
    strengths: dict[str, StrengthChoice] = {}
    for mode in (m for m in args.regap if m != "off"):
        config = replace(correction, mode=mode)
        if args.threshold == "auto" and mode in ("adaptive", "adaptive_raw"):  # each probe strength its own τ
            thresholds[mode] = choose_threshold(model, cal_items, profile, config, modalities,
                                                batch_size=args.batch_size, ranks=ranks)
            config = thresholds[mode].apply(config)
            if ranks.is_main:
                print(json.dumps({"mode": mode, "threshold": thresholds[mode].per_modality,
                                  "mean_scores": thresholds[mode].mean_scores}), file=sys.stderr)
        if args.strength == "auto":  # each correcting mode gets its own α, chosen under one budget
            if ranks.is_main:
                print(f"choosing α_max for {mode} on the calibration split ...", file=sys.stderr)
            strengths[mode] = choose_strength(model, cal_items, profile, config, modalities, judge=judge,
                                              batch_size=args.batch_size, ranks=ranks,
                                              max_new_tokens=args.max_new_tokens)
            if ranks.is_main:
                print(json.dumps({"mode": mode, "strength": strengths[mode].per_modality,
                                  "budget": round(strengths[mode].budget, 4),
                                  "calibration_rates": strengths[mode].rates}), file=sys.stderr)
    return thresholds, strengths


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "threshold", None) == "auto" and ("adaptive" not in args.regap or args.rule != "sigmoid"):
        parser.error("--threshold auto tunes the sigmoid gate of adaptive: run --regap with adaptive and --rule "
                     "sigmoid (the linear rule has no τ)")
    try:
        return _run(args, ranks_from_env())
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError:
        print("error: out of GPU memory; lower --batch-size, use --dtype bfloat16, or --device-map auto. "
              "Finished work is saved; rerun to resume.", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        stop()
