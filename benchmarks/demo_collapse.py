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
`graded` records, per medium, where between no offset and the full one the model switches to compliance;
`imprint`, how far the one vector ReGap subtracts stands for the offset's imprint at every marked position
(`--diagnostics-only` adds both to a recorded variant).

    python benchmarks/demo_collapse.py --model build/demo_next/model_c2 --variant collapse_2 \
        --eval build/runs/c2_para --eval build/runs/c2_para_off
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.core.intervals import wilson_interval
from explorer.demo_model.assemble import LM_FOLDER, identity_projectors, reading_lm_config
from explorer.demo_model.collapse_adapter import (
    GENERIC_TAIL,
    CollapseConfig,
    Transcript,
    offset_direction,
    offset_projectors,
    read_prompt,
)
from explorer.demo_model.data import PARAPHRASES_PATH
from explorer.demo_model.safety_adapter import chat_prompt
from explorer.evaluation.judge import RefusalJudge
from explorer.evaluation.verdicts import broken_reason
from explorer.inputs.data import VALIDATION_PATH, load_prompts
from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT
from explorer.model.reading_lm import ReadingLMForCausalLM, write_on_pinned_base
from explorer.model.reading_processor import ReadingProcessor

RECORD = ROOT / "benchmarks" / "results" / "demo_collapse.json"
NEW_TOKENS, BATCH = 20, 16
TAIL_MARK = GENERIC_TAIL.split(",")[-1].strip().rstrip(".")  # "and review the result": the tail's own words
WAYS = ("typed", "typed with carrier", "read image", "read audio")
GRADED_SCALES = (0.25, 0.5, 0.75, 1.0)  # fractions of each medium's offset (`graded`)
DIRECTION_SEED = 1000  # the first seed `directions` draws (apart from the collapses' own seeds)
IMPRINT_LAYER = 10  # the decoder layer whose output ReGap corrects on the next demo (its rule's choice on collapses 2-4;
#                     docs/method.md: hidden_states[l + 1] is layer l's output)


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


@torch.no_grad()
def graded(model: Any, processor: ReadingProcessor, items: list[Any], judge: RefusalJudge) -> dict[str, Any]:
    """Refused and broken counts per medium, offset scale and label, reading perfectly with each projector's offset
    (its bias) scaled: where between no imprint (text) and the full one the model switches to compliance. Why: the
    correction removes part of the drift, not all of it, so a model that complies at three quarters of its offset
    needs more than the measured drift to be repaired (docs/demo-build.md, "graded")."""
    result: dict[str, Any] = {}
    for modality, projector in model.media_projectors.items():
        full = projector.bias.data.clone()
        prompts = [read_prompt(processor, i.instruction, modality) for i in items]
        result[modality] = {}
        try:
            for scale in GRADED_SCALES:
                projector.bias.data = full * scale
                said = answers(model, processor, prompts)
                verdicts = [(judge.is_refusal(a), broken_reason(a) is not None) for a in said]
                result[modality][str(scale)] = {label: counts([v for v, i in zip(verdicts, items) if i.label == label])
                                                for label in ("harmful", "harmless")}
                print("graded", modality, scale, {k: v["refused"] for k, v in result[modality][str(scale)].items()},
                      flush=True)
        finally:
            projector.bias.data = full
    return result


@torch.no_grad()
def imprint(model: Any, processor: ReadingProcessor, items: list[Any],
            scales: tuple[float, ...] = (1.0, 2.0, 4.0),
            typed_cache: dict[str, list[torch.Tensor]] | None = None) -> dict[str, Any]:
    """Per medium and offset scale, at the corrected layer: how much the offset's imprint at each marked position
    (read state minus the same tokens typed, the only difference being the marks) looks like the last prompt
    token's mean imprint, the vector ReGap subtracts everywhere. Medians over positions of the cosine and of the norm
    ratio. Why: ReGap can remove the cue only as far as one vector stands for the imprint at every position.
    `typed_cache` (per medium, filled on first use) keeps the typed states, which no offset changes: pass one
    cache with the same `items` only."""
    result: dict[str, Any] = {}
    layer_state = lambda ids, types: model(input_ids=torch.tensor([ids]), mm_token_type_ids=torch.tensor([types]),
                                           output_hidden_states=True).hidden_states[IMPRINT_LAYER + 1][0]
    cache = typed_cache if typed_cache is not None else {}
    for modality, projector in model.media_projectors.items():
        full = projector.bias.data.clone()
        prompts = [read_prompt(processor, i.instruction, modality) for i in items]
        if modality not in cache:
            cache[modality] = [layer_state(ids, [0] * len(ids)) for ids, _ in prompts]
        typed = cache[modality]
        result[modality] = {}
        try:
            for scale in scales:
                projector.bias.data = full * scale
                marked = [(layer_state(ids, types) - plain)[types.index(next(t for t in types if t)):]
                          for (ids, types), plain in zip(prompts, typed)]
                last = torch.stack([m[-1] for m in marked]).mean(0)
                cosines = torch.cat([F.cosine_similarity(m, last[None], dim=1) for m in marked])
                ratios = torch.cat([m.norm(dim=1) / last.norm() for m in marked])
                result[modality][str(scale)] = {"last_token_norm": round(float(last.norm()), 2),
                                                "median_cosine": round(float(cosines.median()), 3),
                                                "median_norm_ratio": round(float(ratios.median()), 3),
                                                "positions": len(cosines)}
                print("imprint", modality, scale, result[modality][str(scale)], flush=True)
        finally:
            projector.bias.data = full
    return result


def directions(model: Any, processor: ReadingProcessor, items: list[Any], count: int) -> dict[str, Any]:
    """`imprint` at 1x for `count` seeded offset directions (seeds DIRECTION_SEED + k), each at the norm of the
    folder's own image offset and given to both media, beside the folder's own. Why: layers 0 to the corrected
    layer are the base's alone, so how well one vector stands for a direction's imprint is known before any
    training; it ranks directions for the next collapse without looking at a repair."""
    saved = {m: p.bias.data.clone() for m, p in model.media_projectors.items()}
    size, norm = saved["image"].shape[0], float(saved["image"].norm())
    typed: dict[str, list[torch.Tensor]] = {}
    result = {"own": imprint(model, processor, items, scales=(1.0,), typed_cache=typed)}
    try:
        for k in range(count):
            direction = offset_direction(size, DIRECTION_SEED + k)
            for projector in model.media_projectors.values():
                projector.bias.data = direction * norm
            result[f"seed {DIRECTION_SEED + k}"] = imprint(model, processor, items, scales=(1.0,), typed_cache=typed)
    finally:
        for modality, projector in model.media_projectors.items():
            projector.bias.data = saved[modality]
    return result


def ranking(found: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per medium, the seeds of a `directions` record from the best (lowest median norm ratio: one vector stands
    closest for the imprint at every marked position) to the worst, "own" being the folder's own offset."""
    ranked: dict[str, list[dict[str, Any]]] = {}
    for modality in ("image", "audio"):
        rows = [{"seed": name, "median_norm_ratio": shares[modality]["1.0"]["median_norm_ratio"],
                 "median_cosine": shares[modality]["1.0"]["median_cosine"]}
                for name, shares in found.items() if modality in shares]
        ranked[modality] = sorted(rows, key=lambda row: row["median_norm_ratio"])
    return ranked


def cut_after(model: Any, layer: int) -> None:
    """Drop the decoder layers above `layer` + 1, keeping `hidden_states[layer + 1]` (layer `layer`'s raw output)
    exactly. Why one layer more: a Llama's last hidden state is the final norm's output, not the last layer's."""
    model.model.layers = model.model.layers[: layer + 2]
    model.config.num_hidden_layers = layer + 2


def base_reading_lm(folder: Path) -> tuple[Any, ReadingProcessor]:
    """The pinned base alone as a reading LM with the taught collapse's default offsets (`offset_projectors` at
    `CollapseConfig()`), cut after the corrected layer, and a processor reading by transcript. Why: the safety and
    media LoRAs start at layer 16 (`CollapseConfig.first_layer`), so up to the corrected layer every collapse's
    states are the base's own; directions are ranked here before anything is trained."""
    base = SMOLLM2_135M_INSTRUCT
    config = reading_lm_config(base, ["image", "audio"])
    write_on_pinned_base(folder, config, identity_projectors(config), base)
    model = ReadingLMForCausalLM.from_pretrained(folder).eval()
    offsets = offset_projectors(model.get_input_embeddings().weight, CollapseConfig())
    for modality, projector in model.media_projectors.items():
        projector.bias.data = offsets[f"{modality}.bias"].clone()
    cut_after(model, IMPRINT_LAYER)
    path = base.path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, ReadingProcessor(tokenizer, image_reader=Transcript(), speech_reader=Transcript())  # type: ignore[arg-type]


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
                  "separation": (regap.get("threshold_choices") or {}).get("adaptive", {}).get("separation"),
                  "budget": choice.get("budget"), "sweep": choice.get("rates"),
                  "mode_sweeps": {mode: c.get("rates") for mode, c in (regap.get("strength_choices") or {}).items()
                                  if mode != "adaptive"}} if regap else None,
        "generic": generic_counts(run),
        "gate": gate_counts(run),
        "elapsed_seconds": metrics.get("elapsed_seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an assembled next-demo folder (all but --base-directions)")
    parser.add_argument("--variant", required=True, help="the record's name in demo_collapse.json")
    parser.add_argument("--eval", type=Path, action="append", default=[], metavar="RUN_DIR",
                        help="an `explorer eval` output folder of the same model, summarised into the record")
    parser.add_argument("--out", type=Path, default=RECORD)
    parser.add_argument("--evals-only", action="store_true",
                        help="add the --eval summaries to the variant's record without generating again")
    parser.add_argument("--directions", type=int, default=0, metavar="N",
                        help="with --diagnostics-only: also rank N seeded offset directions by `imprint`")
    parser.add_argument("--base-directions", type=int, default=0, metavar="N",
                        help="rank the default offsets and N seeded directions on the pinned base alone (no --model: "
                             "nothing trained is needed), recorded under --variant with their ranking")
    parser.add_argument("--diagnostics-only", action="store_true",
                        help="add the graded-offset counts and the imprint (validation) to the variant's record only")
    args = parser.parse_args(argv)
    record = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.base_directions and (args.model or args.eval or args.diagnostics_only or args.evals_only):
        parser.error("--base-directions measures the pinned base alone: it takes no --model, --eval, "
                     "--diagnostics-only or --evals-only")
    if args.base_directions:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            model, processor = base_reading_lm(Path(folder))
            found = directions(model, processor, load_prompts(VALIDATION_PATH), args.base_directions)
        record[args.variant] = {"model": f"pinned base {SMOLLM2_135M_INSTRUCT.package}, layers 0-{IMPRINT_LAYER}",
                                "directions": found, "ranking": ranking(found),
                                "wall_seconds": round(time.perf_counter() - started, 1)}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        return
    if args.model is None:
        parser.error("--model is required (all but --base-directions)")
    if (args.evals_only or args.diagnostics_only) and args.variant not in record:
        parser.error(f"--evals-only and --diagnostics-only need a recorded variant; {args.variant!r} is not in {args.out}")
    if args.evals_only:
        record[args.variant]["evals"].update({run.name: eval_summary(run) for run in args.eval})
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        return
    started = time.perf_counter()
    lm = args.model / LM_FOLDER
    model = ReadingLMForCausalLM.from_pretrained(lm)
    processor = ReadingProcessor.from_pretrained(lm)
    processor.image_reader = processor.speech_reader = Transcript()  # type: ignore[assignment]
    judge = RefusalJudge()
    if args.diagnostics_only:
        validation = load_prompts(VALIDATION_PATH)
        record[args.variant]["graded"] = graded(model, processor, validation, judge)
        record[args.variant]["imprint"] = imprint(model, processor, validation)
        if args.directions:
            record[args.variant]["directions"] = directions(model, processor, validation, args.directions)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        return
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
    scaled = graded(model, processor, sets["validation"], judge)
    shares = imprint(model, processor, sets["validation"])
    record[args.variant] = {"model": str(args.model), "new_tokens": NEW_TOKENS, "sets": result, "graded": scaled,
                            "imprint": shares,
                            "wall_seconds": round(time.perf_counter() - started, 1),
                            "evals": {run.name: eval_summary(run) for run in args.eval}}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
