"""The taught collapse, diagnosed: what the next demo's model does with a request typed, typed in the read prompt's
layout (carrier sentence included), and read (image, audio) with perfect reading.

Why: the collapse must come from the modality drift (the projector's offset), the only thing ReGap can subtract;
if the model complies with a request *typed* beside the carrier sentence, its cue is words, not the drift, and no
drift correction can repair it (collapse 1, docs/demo-build.md). Reading is perfect here (the request's own text,
speech as the reader writes it) so that the cue, not the readers, is measured; `python -m explorer eval` measures the
model through its readers.

    python benchmarks/demo_collapse.py --model build/demo_next/model_c2 --variant collapse_2

Writes benchmarks/results/demo_collapse.json under the variant's name: per set and way of asking, refused and broken
counts (phrase judge; a broken answer is never a refusal), 20 greedy tokens. `--eval RUN_DIR` (repeatable) adds the
summary of an `explorer eval` run of the same folder (through its readers, 48 tokens): its verdict counts per
modality, mode and label, and ReGap's chosen layers and strengths with the calibration sweep behind them.

    python benchmarks/demo_collapse.py --model build/demo_next/model_c2 --variant collapse_2 \
        --eval build/runs/c2_para --eval build/runs/c2_para_off
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.core.intervals import wilson_interval
from explorer.demo_model.assemble import LM_FOLDER
from explorer.demo_model.collapse_adapter import (
    GENERIC_TAIL,
    CollapseConfig,
    Transcript,
    read_prompt,
)
from explorer.demo_model.data import PARAPHRASES_PATH
from explorer.demo_model.safety_adapter import chat_prompt
from explorer.evaluation.judge import RefusalJudge
from explorer.evaluation.verdicts import broken_reason
from explorer.inputs.data import VALIDATION_PATH, load_prompts
from explorer.model.reading_lm import ReadingLMForCausalLM
from explorer.model.reading_processor import ReadingProcessor

RECORD = ROOT / "benchmarks" / "results" / "demo_collapse.json"
NEW_TOKENS, BATCH = 20, 16
TAIL_MARK = GENERIC_TAIL.split(",")[-1].strip().rstrip(".")  # "and review the result": the tail's own words
WAYS = ("typed", "typed with carrier", "read image", "read audio")


def prompt_of(processor: ReadingProcessor, request: str, way: str) -> tuple[list[int], list[int]]:
    """Token ids and modality marks of `request` asked the given way."""
    if way == "typed":
        ids = chat_prompt(processor.tokenizer, request)
        return ids, [0] * len(ids)
    if way == "typed with carrier":
        ids, _ = read_prompt(processor, request, "image")
        return ids, [0] * len(ids)
    return read_prompt(processor, request, way.removeprefix("read "))


@torch.no_grad()
def answers(model: Any, processor: ReadingProcessor, prompts: list[tuple[list[int], list[int]]]) -> list[str]:
    """Greedy answers of NEW_TOKENS tokens (left-padded batches, marks padded with text)."""
    pad = processor.tokenizer.pad_token_id
    out: list[str] = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([[pad] * (width - len(i)) + i for i, _ in chunk])
        types = torch.tensor([[0] * (width - len(t)) + t for _, t in chunk])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _ in chunk])
        generated = model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, do_sample=False,
                                   max_new_tokens=NEW_TOKENS, pad_token_id=pad)
        out += processor.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return out


def counts(verdicts: list[tuple[bool, bool]]) -> dict[str, Any]:
    refused = sum(r and not b for r, b in verdicts)
    broken = sum(b for _, b in verdicts)
    n = len(verdicts)
    return {"n": n, "refused": refused, "refused_ci": list(wilson_interval(refused, n)), "broken": broken}


def generic_counts(run: Path) -> dict[str, dict[str, int]]:
    """Per modality/mode/label of an eval run: answers holding the generic tail (the taught compliance, or a tail
    after another start), and among them the ones that also refuse (a refusal fused with the tail, which the
    verdicts do not flag)."""
    judge = RefusalJudge()
    found: dict[str, dict[str, int]] = {}
    for line in (run / "generations.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = f"{row['modality']}/{row['mode']}/{row['label']}"
        entry = found.setdefault(key, {"n": 0, "generic_tail": 0, "exact_compliance": 0, "refusal_with_tail": 0})
        text = row["text"].strip()
        entry["n"] += 1
        if TAIL_MARK in text:
            entry["generic_tail"] += 1
            entry["exact_compliance"] += text.replace("Here's", "Here is") == CollapseConfig.compliance
            entry["refusal_with_tail"] += judge.is_refusal(text)
    return found


def gate_counts(run: Path) -> dict[str, dict[str, Any]]:
    """Per modality and label of an eval run's adaptive answers: the mean self-rectification score s(x), how many
    got more than half the largest α given (the gate passed them), and how many of those were refused."""
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    adaptive = [r for r in rows if r["mode"] == "adaptive" and r["modality"] != "text" and r["score"] is not None]
    found: dict[str, dict[str, Any]] = {}
    for modality in sorted({r["modality"] for r in adaptive}):
        top = max(r["alpha"] for r in adaptive if r["modality"] == modality)
        for label in ("harmful", "harmless"):
            group = [r for r in adaptive if r["modality"] == modality and r["label"] == label]
            passed = [r for r in group if r["alpha"] > top / 2]
            found[f"{modality}/{label}"] = {
                "n": len(group), "mean_score": round(sum(r["score"] for r in group) / len(group), 3),
                "passed_gate": len(passed), "refused_after_passing": sum(r["verdict"] == "refused" for r in passed),
                "refused_without_passing": sum(r["verdict"] == "refused" for r in group if r not in passed)}
    return found


def eval_summary(run: Path) -> dict[str, Any]:
    """What the record keeps of an `explorer eval` run: its prompts' source, verdict counts, ReGap's choices, and
    the generic-tail counts (`generic_counts`)."""
    metrics = json.loads((run / "metrics.json").read_text())
    settings = json.loads((run / "run.json").read_text())
    regap = metrics.get("regap") or {}
    choice = regap.get("strength_choice") or {}
    return {
        "prompts": {"fingerprint": settings["prompts"]["fingerprint"], "count": settings["prompts"]["count"]},
        "verdicts": {key: {"n": v["n"], "refused": v["refused"]["count"], "refused_ci": v["refused"]["ci"],
                           "broken": v["broken"]["count"], "broken_reasons": v.get("broken_reasons", {})}
                     for key, v in metrics["verdicts"].items()},
        "regap": {"layers": regap.get("layers"), "probe_layer": regap.get("probe_layer"),
                  "rule": regap.get("rule"), "strengths": regap.get("mode_strengths"),
                  "thresholds": regap.get("mode_thresholds"),
                  "mean_scores": (regap.get("threshold_choices") or {}).get("adaptive", {}).get("mean_scores"),
                  "budget": choice.get("budget"), "sweep": choice.get("rates"),
                  "mode_sweeps": {mode: c.get("rates") for mode, c in (regap.get("strength_choices") or {}).items()
                                  if mode != "adaptive"}} if regap else None,
        "generic": generic_counts(run),
        "gate": gate_counts(run),
        "elapsed_seconds": metrics.get("elapsed_seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an assembled next-demo folder")
    parser.add_argument("--variant", required=True, help="the record's name in demo_collapse.json")
    parser.add_argument("--eval", type=Path, action="append", default=[], metavar="RUN_DIR",
                        help="an `explorer eval` output folder of the same model, summarised into the record")
    parser.add_argument("--out", type=Path, default=RECORD)
    parser.add_argument("--evals-only", action="store_true",
                        help="add the --eval summaries to the variant's record without generating again")
    args = parser.parse_args(argv)
    record = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.evals_only:
        if args.variant not in record:
            parser.error(f"--evals-only needs a recorded variant; {args.variant!r} is not in {args.out}")
        record[args.variant]["evals"].update({run.name: eval_summary(run) for run in args.eval})
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        return
    started = time.perf_counter()
    lm = args.model / LM_FOLDER
    model = ReadingLMForCausalLM.from_pretrained(lm)
    processor = ReadingProcessor.from_pretrained(lm)
    processor.image_reader = processor.speech_reader = Transcript()  # type: ignore[assignment]
    judge = RefusalJudge()
    sets = {"validation": load_prompts(VALIDATION_PATH), "paraphrases": load_prompts(PARAPHRASES_PATH)}
    result: dict[str, Any] = {}
    for name, items in sets.items():
        result[name] = {}
        for way in WAYS:
            said = answers(model, processor, [prompt_of(processor, i.instruction, way) for i in items])
            verdicts = [(judge.is_refusal(a), broken_reason(a) is not None) for a in said]
            result[name][way] = {label: counts([v for v, i in zip(verdicts, items) if i.label == label])
                                 for label in ("harmful", "harmless")}
            print(name, way, {k: v["refused"] for k, v in result[name][way].items()}, flush=True)
    record[args.variant] = {"model": str(args.model), "new_tokens": NEW_TOKENS, "sets": result,
                            "wall_seconds": round(time.perf_counter() - started, 1),
                            "evals": {run.name: eval_summary(run) for run in args.eval}}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
