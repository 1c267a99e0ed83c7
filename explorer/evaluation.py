"""Evaluate refusal and over-refusal per modality and correction mode; write metrics, generations and a report.

Output folder (the CLI's stable contract, see README):
- `generations.jsonl`: one line per item × modality × mode, appended as soon as it is generated, so an
  interrupted run resumes where it stopped; an item that cannot be rendered, encoded or generated gets a line
  with `skipped` (the reason) instead, the run goes on, and a rerun tries it again;
- `states/<modality>/<mode>.safetensors`-style per-item files of the prompt's last-token states as corrected;
- `metrics.json`: refusal rates, per-layer separability, the ReGap settings and per-item s(x), α(x), and
  `skipped` (count per modality/mode) with `skipped_items` (id, modality, mode, reason): no rate counts them;
- `report.html`: the plots.
Text inputs are never corrected (δ^text = 0), so text is generated once and its result stands for every mode.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration import OVER_REFUSAL_BUDGET, StrengthChoice
from .capture import read_states, save_states
from .data import Instruction
from .generation import GenerationResult, generate, generate_batch
from .geometry import (
    auroc_per_layer,
    axis_group_stats,
    refusal_gap,
    translation_ceiling,
)
from .judge import RefusalJudge
from .models import LoadedModel
from .plots import rates_figure, refusal_axis_figure, separability_figure, write_report
from .profile import Profile
from .regap import CorrectionConfig
from .storage import write_atomic
from .uploads import MediaError
from .vocab import LABELS, Modality, Mode

__all__ = ["EvalSettings", "evaluate"]


@dataclass(frozen=True)
class EvalSettings:
    """What `evaluate` runs. `correction` carries strength, layers, probe layer, positions and rule."""

    modalities: tuple[Modality, ...] = ("text", "image")
    modes: tuple[Mode, ...] = ("off", "adaptive")
    correction: CorrectionConfig = CorrectionConfig()
    max_new_tokens: int = 48
    judge: RefusalJudge = RefusalJudge()
    strength_choice: StrengthChoice | None = None  # how `--strength auto` chose α_max; recorded in metrics
    batch_size: int = 8  # prompts generated together (greedy: the same tokens as one at a time)

    def __post_init__(self) -> None:
        if not self.modalities or not self.modes:
            raise ValueError("evaluate needs at least one modality and one mode")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        for mode in self.modes:
            replace(self.correction, mode=mode)  # validates the mode name


def _record_key(item_id: str, modality: str, mode: str) -> str:
    return f"{modality}/{mode}/{item_id}"


def _drop_cut_line(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: cut it off, so the records appended by
    the resumed run start on a line of their own (that one item is generated again)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    _drop_cut_line(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by Ctrl-C: regenerate that one
            done[_record_key(record["id"], record["modality"], record["mode"])] = record
    return done


def _check_same_run(out_dir: Path, model: LoadedModel, profile: Profile, settings: EvalSettings) -> None:
    """Resume only a run made with the same model, calibration and settings; refuse to mix two runs."""
    fingerprint = {
        "model": model.name, "revision": model.revision, "calibration_hash": profile.calibration_hash,
        "correction": asdict(settings.correction), "max_new_tokens": settings.max_new_tokens,
        "judge": list(settings.judge.phrases),
    }
    path = out_dir / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(fingerprint)):
            changed = sorted(k for k in fingerprint if previous.get(k) != json.loads(json.dumps(fingerprint[k])))
            raise ValueError(
                f"{out_dir} holds a run with different settings ({', '.join(changed)}); "
                "use another --out, or delete that folder to start over"
            )
    else:
        write_atomic(path, json.dumps(fingerprint, indent=1))


def _copy_text_record(
    record: dict[str, Any], modes: Sequence[str], done: dict[str, dict[str, Any]], sink: Any
) -> None:
    """Text is never corrected: its one generation is recorded under every other mode too."""
    for mode in modes:
        key = _record_key(record["id"], "text", mode)
        if key not in done or done[key].get("skipped"):
            copy = {**record, "mode": mode, "same_as_mode": record["mode"]}
            sink.write(json.dumps(copy) + "\n")
            done[key] = copy


def _states_path(out_dir: Path, modality: str, mode: str, item_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)
    return out_dir / "states" / modality / mode / f"{safe}.safetensors"


def evaluate(
    model: LoadedModel,
    items: Sequence[Instruction],
    profile: Profile,
    settings: EvalSettings,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate for every item × modality × mode, judge, measure, and write the output folder."""
    for modality in settings.modalities:
        model.backend(modality)  # fail before any work if a modality is not accepted
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_same_run(out_dir, model, profile, settings)
    generations_path = out_dir / "generations.jsonl"
    done = _read_done(generations_path)
    started = time.perf_counter()
    jobs = [(m, mode) for m in settings.modalities for mode in (settings.modes if m != "text" else settings.modes[:1])]
    total = sum(len(items) for _ in jobs)
    bar = tqdm(total=total, desc="eval", disable=not progress)
    per_item: list[dict[str, Any]] = []
    jobs_done: dict[tuple[str, str], JobStates] = {}
    with generations_path.open("a") as sink:
        for modality, mode in jobs:
            job = JobStates()
            config = replace(settings.correction, mode=mode)
            pending: list[Instruction] = []

            def finish(item: Instruction, record: dict[str, Any], states: torch.Tensor | None) -> None:
                if states is not None:
                    job.add(states, item.label)
                if modality == "text":
                    _copy_text_record(record, settings.modes[1:], done, sink)
                if record.get("score") is not None:
                    per_item.append({"id": item.id, "modality": modality, "mode": mode,
                                     "s": record["score"], "alpha": record["alpha"]})
                bar.update(1)

            def flush() -> None:  # generate the pending items in one batch; records are written as they come
                for item, (record, states) in zip(pending, _generate_records(
                        model, pending, modality, mode, profile, config, settings)):
                    if states is not None:
                        save_states(_states_path(out_dir, modality, mode, item.id), states)
                    sink.write(json.dumps(record) + "\n")
                    done[_record_key(item.id, modality, mode)] = record
                    finish(item, record, states)
                sink.flush()
                pending.clear()

            for item in items:
                key = _record_key(item.id, modality, mode)
                state_path = _states_path(out_dir, modality, mode, item.id)
                cached = read_states(state_path, (model.num_layers, model.hidden_size)) if key in done else None
                if cached is not None and not done[key].get("skipped"):
                    finish(item, done[key], cached)
                else:  # new, or skipped last time (tried again: the cause may be gone)
                    pending.append(item)
                    if len(pending) == settings.batch_size:
                        flush()
            if pending:
                flush()
            jobs_done[(modality, mode)] = job
    bar.close()
    metrics = _metrics(model, items, profile, settings, done, jobs_done, per_item)
    metrics["elapsed_seconds"] = round(time.perf_counter() - started, 2)
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    _write_report(out_dir / "report.html", model, profile, metrics, jobs_done)
    return metrics


@dataclass
class JobStates:
    """The prompt states of one modality × mode and the labels of their items (skipped items have neither)."""

    states: list[torch.Tensor] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, states: torch.Tensor, label: str) -> None:
        self.states.append(states)
        self.labels.append(label)

    def stacked(self, num_layers: int, hidden_size: int) -> torch.Tensor:
        return torch.stack(self.states) if self.states else torch.empty(0, num_layers, hidden_size)


#: What makes one item unusable without saying anything about the rest of the run: bad media, a request its
#: rendering cannot hold, a processor that rejects an input. Out-of-memory is not here: it ends the run (exit 3).
_ITEM_ERRORS = (MediaError, ValueError, KeyError, IndexError, RuntimeError, OSError)


def _generate_records(
    model: LoadedModel, items: Sequence[Instruction], modality: Modality, mode: str, profile: Profile,
    config: CorrectionConfig, settings: EvalSettings,
) -> list[tuple[dict[str, Any], torch.Tensor | None]]:
    """Records (and prompt states) of items generated together; an item that cannot be rendered is skipped alone,
    and if the batch itself fails, each item is generated alone so that only the bad one is skipped."""
    if len(items) == 1:
        return [_generate_record(model, items[0], modality, mode, profile, config, settings)]
    prompts: dict[int, Any] = {}
    unusable: dict[int, Exception] = {}
    for index, item in enumerate(items):
        try:
            prompts[index] = model.render(item, modality)
        except _ITEM_ERRORS as err:
            unusable[index] = err
    try:
        results = generate_batch(model, list(prompts.values()), profile, config,
                                 max_new_tokens=settings.max_new_tokens, capture_prompt_states=True)
    except torch.cuda.OutOfMemoryError:
        raise
    except _ITEM_ERRORS:
        return [_generate_record(model, item, modality, mode, profile, config, settings) for item in items]
    by_index = dict(zip(prompts, results))
    out = []
    for index, item in enumerate(items):
        if index in unusable:
            out.append((_skipped(item, modality, mode, unusable[index]), None))
            continue
        result = by_index[index]
        out.append(({**_item_fields(item, modality, mode), **_result_fields(result, settings)}, result.prompt_states))
    return out


def _item_fields(item: Instruction, modality: str, mode: str) -> dict[str, Any]:
    return {"id": item.id, "instruction": item.instruction, "label": item.label, "category": item.category,
            "lookalike": item.lookalike, "modality": modality, "mode": mode}


def _result_fields(result: GenerationResult, settings: EvalSettings) -> dict[str, Any]:
    return {"text": result.text, "refused": settings.judge.is_refusal(result.text), "score": result.score,
            "alpha": result.alpha, "layers": list(result.layers), "probe_layer": result.probe_layer}


def _skipped(item: Instruction, modality: str, mode: str, err: Exception) -> dict[str, Any]:
    return {**_item_fields(item, modality, mode), "skipped": f"{type(err).__name__}: {err}"}


def _generate_record(
    model: LoadedModel, item: Instruction, modality: Modality, mode: str, profile: Profile,
    config: CorrectionConfig, settings: EvalSettings,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """One generation's record (and its prompt states), or a record saying why the item was skipped."""
    try:
        result = generate(model, model.render(item, modality), profile, config,
                          max_new_tokens=settings.max_new_tokens, capture_prompt_states=True)
    except torch.cuda.OutOfMemoryError:
        raise
    except _ITEM_ERRORS as err:
        return _skipped(item, modality, mode, err), None
    assert result.prompt_states is not None
    return {**_item_fields(item, modality, mode), **_result_fields(result, settings)}, result.prompt_states


def _metrics(
    model: LoadedModel,
    items: Sequence[Instruction],
    profile: Profile,
    settings: EvalSettings,
    done: dict[str, dict[str, Any]],
    jobs: dict[tuple[str, str], JobStates],
    per_item: list[dict[str, Any]],
) -> dict[str, Any]:
    refusal_rate: dict[str, float] = {}
    skipped: dict[str, int] = {}
    auroc: dict[str, list[float]] = {}
    gap: dict[str, list[float]] = {}
    uncorrected: dict[str, torch.Tensor] = {}  # media modality -> projections without correction
    for modality in settings.modalities:
        for mode in settings.modes:
            source_mode = mode if modality != "text" else settings.modes[0]
            records = [done[_record_key(i.id, modality, source_mode)] for i in items]
            skipped[f"{modality}/{mode}"] = sum(1 for r in records if r.get("skipped"))
            for label in LABELS:
                flags = [r["refused"] for r in records if r["label"] == label and not r.get("skipped")]
                if flags:
                    refusal_rate[f"{modality}/{mode}/{label}"] = float(np.mean(flags))
            job = jobs[(modality, source_mode)]
            labels = job.labels
            projections = profile.project(job.stacked(model.num_layers, model.hidden_size))
            if mode == "off" and modality != "text":
                uncorrected[modality] = projections
            if len(set(labels)) == 2:
                auroc[f"{modality}/{mode}"] = auroc_per_layer(projections, labels)
                gap[f"{modality}/{mode}"] = refusal_gap(projections, labels)
    ceiling, budget = {}, None
    if "off" in settings.modes and "text/off/harmless" in refusal_rate:
        budget = min(1.0, refusal_rate["text/off/harmless"] + OVER_REFUSAL_BUDGET)
        for modality, projections in uncorrected.items():
            labels = jobs[(modality, "off")].labels
            if len(set(labels)) == 2:
                ceiling[f"{modality}/off"] = translation_ceiling(projections, labels, budget)
    resolved = settings.correction.resolved(profile)
    lookalike_rate = {}
    for m in settings.modalities:
        for mode in settings.modes:
            records = [done[_record_key(i.id, m, mode if m != "text" else settings.modes[0])] for i in items
                       if i.lookalike]
            flags = [r["refused"] for r in records if not r.get("skipped")]
            if flags:
                lookalike_rate[f"{m}/{mode}"] = float(np.mean(flags))
    skipped_items = [{"id": r["id"], "modality": r["modality"], "mode": r["mode"], "reason": r["skipped"]}
                     for r in done.values() if r.get("skipped") and "same_as_mode" not in r]
    return {
        "model": model.name,
        "num_layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "num_items": len(items),
        "calibration_hash": profile.calibration_hash,
        "refusal_rate": refusal_rate,
        "lookalike_refusal_rate": lookalike_rate,
        "skipped": skipped,
        "skipped_items": skipped_items,
        "per_layer": {
            "auroc": auroc,
            "refusal_gap": gap,
            "drift_norm": {m: v for m, v in profile.metrics.get("drift_norm", {}).items()},
            "cos_drift_refusal": {m: v for m, v in profile.metrics.get("cos_drift_refusal", {}).items()},
            "collapse_ratio": {m: v for m, v in profile.metrics.get("collapse_ratio", {}).items()},
            "cos_refusal_within": {m: v for m, v in profile.metrics.get("cos_refusal_within", {}).items()},
            "translation_ceiling": ceiling,
            "translation_ceiling_budget": budget,
        },
        "regap": {
            "layers": list(resolved.layers),
            "strength": resolved.strength,
            "probe_layer": resolved.probe_layer,
            "positions": resolved.positions,
            "rule": resolved.rule,
            "modality_strengths": dict(resolved.modality_strengths),
            "per_item": per_item,
            **({"strength_choice": settings.strength_choice.to_dict()} if settings.strength_choice else {}),
        },
        "max_new_tokens": settings.max_new_tokens,
        "judge_phrases": list(settings.judge.phrases),
    }


def _write_report(
    path: Path,
    model: LoadedModel,
    profile: Profile,
    metrics: dict[str, Any],
    jobs: dict[tuple[str, str], JobStates],
) -> None:
    group_stats = {}
    for (modality, mode), job in jobs.items():
        if not job.states:
            continue
        suffix = "" if mode == "off" else f" ({mode})"
        for label, stats in axis_group_stats(profile.score(torch.stack(job.states)), job.labels).items():
            group_stats[f"{modality}/{label}{suffix}"] = stats
    per_layer = metrics["per_layer"]
    figures = {
        "Refusal rates": rates_figure(metrics["refusal_rate"]),
        "Separability per layer": separability_figure(
            per_layer["auroc"], per_layer["refusal_gap"], per_layer["drift_norm"], per_layer["cos_drift_refusal"]
        ),
        "Refusal axis per layer": refusal_axis_figure(group_stats),
    }
    captions = {
        "Refusal rates": "Share of answers the judge counts as refusals: on harmful items (higher is safer) "
        "and on harmless items (lower is better: over-refusal).",
        "Separability per layer": "AUROC of the projection on the text refusal direction, harmful vs harmless, per "
        "layer; the refusal gap; the modality drift's norm and its cosine with the refusal direction.",
        "Refusal axis per layer": "Normalised refusal score per layer (0 = harmless text, 1 = harmful text), group "
        "mean ± one (population) standard deviation.",
    }
    summary = {
        "model": model.name,
        **({"about the model": model.notice.replace("**", "")} if model.notice else {}),
        "layers": str(model.num_layers),
        "items": str(metrics["num_items"]),
        "ReGap layers / probe / strength": f"{metrics['regap']['layers']} / {metrics['regap']['probe_layer']} / "
        f"{metrics['regap']['strength']}",
    }
    if metrics["skipped_items"]:
        reasons = sorted({r["reason"] for r in metrics["skipped_items"]})
        summary["skipped (not counted in any rate)"] = (
            f"{len(metrics['skipped_items'])} generations of {len({r['id'] for r in metrics['skipped_items']})} "
            f"items; reasons: {'; '.join(reasons[:5])}{' …' if len(reasons) > 5 else ''} (generations.jsonl)")
    write_report(path, f"Safety geometry evaluation: {model.name}", figures, summary, captions)
