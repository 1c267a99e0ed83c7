"""Evaluate refusal and over-refusal per modality and correction mode; write metrics, generations and a report.

Output folder (the CLI's stable contract, see README):
- `generations.jsonl`: one line per item × modality × mode, appended as soon as it is generated (and on the disk,
  fsync, after each batch), so an interrupted run resumes where it stopped (a data-parallel run appends to one
  file per rank), and rewritten once at the end in the order of one uninterrupted process
  (`explorer.evaluation.eval_records`); an item that cannot be rendered, encoded or generated gets a line with `skipped`
  (the reason) instead, the run goes on, and a rerun tries it again. Each line carries its item's `item_hash`:
  an item edited in the prompt file since is generated again, never paired with its old answer;
- `generations.earlier.jsonl`: records of items not in this run's prompt set (never counted);
- `run.json`: the settings a resumed run must share, and the prompt set's fingerprint; `run.lock`: held by the
  eval writing the folder (`explorer.core.run_lock`: a second one is refused);
- `states/<modality>/<mode>.safetensors`-style per-item files of the prompt's last-token states as corrected;
- `metrics.json`: refusal rates, per-layer separability, the ReGap settings and per-item s(x), α(x), and
  `skipped` (count per modality/mode) with `skipped_items` (id, modality, mode, reason): no rate counts them;
- `report.html`: the plots.
Text inputs are never corrected (δ^text = 0), so text is generated once and its result stands for every mode.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from explorer.core.distributed import SINGLE, Ranks, barrier, broadcast_object
from explorer.core.run_lock import hold_run
from explorer.core.storage import write_atomic
from explorer.core.vocab import Modality, Mode
from explorer.correction.generation import GenerationResult, generate, generate_batch
from explorer.correction.regap import CorrectionConfig
from explorer.evaluation.eval_metrics import (
    JobStates,
    compute_metrics,
    write_eval_report,
)
from explorer.evaluation.eval_records import (
    PromptSet,
    canonical_records,
    read_done,
    record_key,
    shard_file,
    states_match,
    states_path,
    write_canonical,
)
from explorer.evaluation.eval_settings import EvalSettings
from explorer.evaluation.verdicts import broken_reason, verdict_of
from explorer.geometry.profile import Profile
from explorer.inputs.data import Instruction
from explorer.inputs.uploads import MediaError
from explorer.model.capture import read_states, save_states
from explorer.model.models import LoadedModel

__all__ = ["EvalSettings", "evaluate"]


def _check_same_run(
    out_dir: Path, model: LoadedModel, profile: Profile, settings: EvalSettings, prompts: PromptSet
) -> dict[str, Any]:
    """Resume only a run made with the same model, calibration and settings; refuse to mix two runs.

    The prompt set may differ (another --limit, an edited file): its records are sorted item by item
    (`PromptSet.sort`), and run.json's "prompts" (absent in folders written before it: accepted, then recorded)
    is rewritten with the set now run. Returns the fingerprint to record. Only reads: in a data-parallel run every
    rank reads the same file before any rank writes it (`_record_run`, rank 0, after a barrier), so all ranks reach
    the same verdict."""
    correction = asdict(settings.correction)
    if not correction["modality_thresholds"]:  # absent from folders written before `--threshold auto`: still resumes
        del correction["modality_thresholds"]
    fingerprint = json.loads(json.dumps({
        "model": model.name, "revision": model.revision, "calibration_hash": profile.calibration_hash,
        "correction": correction, "mode_strengths": settings.mode_strengths,
        # only when chosen, so a folder written before `--threshold auto` existed still resumes
        **({"mode_thresholds": settings.mode_thresholds} if settings.threshold_choices else {}),
        "max_new_tokens": settings.max_new_tokens,
        "judge": settings.judge.describe(),
    }))
    path = out_dir / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        previous.pop("prompts", None)
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise ValueError(
                f"{out_dir} holds a run with different settings ({', '.join(changed)}); "
                "use another --out, or delete that folder to start over"
            )
    return {**fingerprint, "prompts": prompts.describe()}


def _record_run(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    path = out_dir / "run.json"
    if not path.is_file() or json.loads(path.read_text()) != fingerprint:
        write_atomic(path, json.dumps(fingerprint, indent=1))


def _copy_text_record(
    record: dict[str, Any], modes: Sequence[str], done: dict[str, dict[str, Any]], sink: Any
) -> None:
    """Text is never corrected: its one generation is recorded under every other mode too."""
    for mode in modes:
        key = record_key(record["id"], "text", mode)
        if key not in done or done[key].get("skipped"):
            copy = {**record, "mode": mode, "same_as_mode": record["mode"]}
            sink.write(json.dumps(copy) + "\n")
            done[key] = copy


def _jobs(settings: EvalSettings) -> list[tuple[Modality, Mode]]:
    """(modality, mode) in run order; text only under the first mode (its record stands for every mode)."""
    return list(dict.fromkeys((m, settings.generated_under(m, mode)) for m in settings.modalities
                              for mode in settings.modes))


def evaluate(
    model: LoadedModel,
    items: Sequence[Instruction],
    profile: Profile,
    settings: EvalSettings,
    out_dir: Path,
    progress: bool = True,
    ranks: Ranks = SINGLE,
) -> dict[str, Any]:
    """Generate for every item × modality × mode, judge, measure, and write the output folder.

    In a data-parallel run (`ranks` from torchrun, see `explorer.core.distributed`) this process generates only its
    shard of the items, into its own record file; once every rank is done, rank 0 merges the records, computes
    the metrics from every rank's records and states, and writes the folder; every rank returns the metrics.
    The folder is locked for the whole call (`explorer.core.run_lock`): a second run on it raises `RunLockedError`.
    """
    for modality in settings.modalities:
        model.backend(modality)  # fail before any work if a modality is not accepted
    with hold_run(out_dir, ranks):
        return _evaluate(model, items, profile, settings, out_dir, progress, ranks)


def _evaluate(
    model: LoadedModel, items: Sequence[Instruction], profile: Profile, settings: EvalSettings, out_dir: Path,
    progress: bool, ranks: Ranks,
) -> dict[str, Any]:
    """`evaluate` while this run holds the folder."""
    prompts = PromptSet.of(items)
    fingerprint = _check_same_run(out_dir, model, profile, settings, prompts)
    barrier(ranks)
    if ranks.is_main:
        _record_run(out_dir, fingerprint)
    started = time.perf_counter()
    own_file = shard_file(out_dir, ranks.rank if ranks.active else None)
    records = prompts.sort(read_done(out_dir, repair=own_file, prompts=prompts))
    if ranks.is_main:
        prompts.report(records)
    states = _generate_shard(model, ranks.shard(items), profile, settings, out_dir, records.done, own_file,
                             progress and ranks.is_main, prompts)
    barrier(ranks)
    metrics = None
    if ranks.is_main:
        if ranks.active:
            records = prompts.sort(read_done(out_dir, prompts=prompts))  # now with every rank's records
        metrics = _finish(model, items, profile, settings, out_dir, records.done, states)
        write_canonical(out_dir, canonical_records(items, _jobs(settings), settings.modes[1:], records.done),
                        records.other.values())
        metrics["elapsed_seconds"] = round(time.perf_counter() - started, 2)
        write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return broadcast_object(ranks, metrics)


def _generate_shard(
    model: LoadedModel, items: Sequence[Instruction], profile: Profile, settings: EvalSettings, out_dir: Path,
    done: dict[str, dict[str, Any]], sink_path: Path, progress: bool, prompts: PromptSet,
) -> dict[str, torch.Tensor]:
    """Generate what `items` still lack (new, changed, skipped last time, or whose states file is gone, damaged or
    of other content), appending each record to `sink_path` as it comes, on the disk after each batch (one fsync
    per batch: a power cut loses at most the batch); return every item's prompt states by record key."""
    jobs = _jobs(settings)
    bar = tqdm(total=len(items) * len(jobs), desc="eval", disable=not progress)
    states: dict[str, torch.Tensor] = {}
    with sink_path.open("a") as sink:
        for modality, mode in jobs:
            config = settings.correction_for(mode)
            pending: list[Instruction] = []

            def flush() -> None:  # generate the pending items in one batch; records are written as they come
                for item, (record, item_states) in zip(pending, _generate_records(
                        model, pending, modality, mode, profile, config, settings)):
                    key = record_key(item.id, modality, mode)
                    record["item_hash"] = prompts.hashes[item.id]
                    if item_states is not None:
                        save_states(states_path(out_dir, modality, mode, item.id), item_states,
                                    {"item_hash": record["item_hash"]})
                        states[key] = item_states
                    sink.write(json.dumps(record) + "\n")
                    done[key] = record
                    if modality == "text":
                        _copy_text_record(record, settings.modes[1:], done, sink)
                    bar.update(1)
                sink.flush()
                os.fsync(sink.fileno())
                pending.clear()

            for item in items:
                key = record_key(item.id, modality, mode)
                path = states_path(out_dir, modality, mode, item.id)
                cached = (read_states(path, (model.num_layers, model.hidden_size))
                          if key in done and states_match(path, prompts.hashes[item.id]) else None)
                if cached is not None and not done[key].get("skipped"):
                    states[key] = cached
                    if modality == "text":  # copies lost to a kill between the record and its copies
                        _copy_text_record(done[key], settings.modes[1:], done, sink)
                    bar.update(1)
                else:  # new, or skipped last time (tried again: the cause may be gone)
                    pending.append(item)
                    if len(pending) == settings.batch_size:
                        flush()
            if pending:
                flush()
        sink.flush()  # the text copies written for cached records
        os.fsync(sink.fileno())
    bar.close()
    return states


def _finish(
    model: LoadedModel, items: Sequence[Instruction], profile: Profile, settings: EvalSettings, out_dir: Path,
    done: dict[str, dict[str, Any]], states: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Gather every job's states and per-item scores in item order (this rank's from memory, the others' from
    their files), write the report, and return the metrics (`done`: this set's records only)."""
    jobs = _jobs(settings)
    per_item: list[dict[str, Any]] = []
    job_states: dict[tuple[str, str], JobStates] = {}
    for modality, mode in jobs:
        job = JobStates()
        for item in items:
            key = record_key(item.id, modality, mode)
            record = done.get(key)
            if record is None:
                raise RuntimeError(f"no record of {key} after every process finished; rerun the same command")
            if not record.get("skipped"):
                item_states = states.get(key)
                if item_states is None:
                    item_states = read_states(states_path(out_dir, modality, mode, item.id),
                                              (model.num_layers, model.hidden_size))
                if item_states is None:
                    raise RuntimeError(f"the prompt states of {key} are missing or damaged; rerun the same command "
                                       "to generate that item again")
                job.add(item_states, item.label)
            if record.get("score") is not None:
                per_item.append({"id": item.id, "modality": modality, "mode": mode,
                                 "s": record["score"], "alpha": record["alpha"]})
        job_states[(modality, mode)] = job
    metrics = compute_metrics(model, items, profile, settings, done, job_states, per_item)
    write_eval_report(out_dir / "report.html", model, profile, metrics, job_states)
    return metrics


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
        out.append(({**_item_fields(item, modality, mode), **_result_fields(result, settings, item.instruction)},
                    result.prompt_states))
    return out


def _item_fields(item: Instruction, modality: str, mode: str) -> dict[str, Any]:
    return {"id": item.id, "instruction": item.instruction, "label": item.label, "category": item.category,
            "lookalike": item.lookalike, "modality": modality, "mode": mode}


def _result_fields(result: GenerationResult, settings: EvalSettings, request: str) -> dict[str, Any]:
    """`refused` is the judge's reading (of the request and the answer); `verdict` is the answer's verdict, broken
    first (explorer.evaluation.verdicts), with `broken` saying why when it is."""
    refused = settings.judge.is_refusal(result.text, request)
    return {"text": result.text, "refused": refused, "verdict": verdict_of(refused, result.text),
            "broken": broken_reason(result.text), "score": result.score,
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
    return ({**_item_fields(item, modality, mode), **_result_fields(result, settings, item.instruction)},
            result.prompt_states)
