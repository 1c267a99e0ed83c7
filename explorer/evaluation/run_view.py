"""Read a finished evaluation run for the app: its summary, plots and per-item answers, without the model.

Why: results travel. An overnight run on a GPU node leaves a folder (`metrics.json`, `generations.jsonl`); a
stakeholder opens it on a laptop, in the browser, with no model loaded. The app lists run folders under the
roots it was given (`python app.py --runs DIR`; never a path typed by a visitor) and shows them through these
functions, which only read files.

>>> names = list_runs([Path("runs")])                               # doctest: +SKIP
>>> view = open_run(Path("runs"), names[0])                          # doctest: +SKIP
>>> view.summary, view.figures["Refusal rates"], view.rows(modality="image")[:2]   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go

from explorer.core.redact import public_text
from explorer.evaluation.compare import RunResult, load_run
from explorer.evaluation.verdict_stats import record_verdict
from explorer.report.plots import rates_figure, separability_figure

__all__ = ["ROW_HEADERS", "RunView", "list_runs", "open_run", "read_run", "resolve_run", "run_rows"]

ROW_HEADERS = ["id", "modality", "mode", "label", "category", "verdict", "α(x)", "s(x)", "request", "answer"]


def _labels(roots: Sequence[Path]) -> list[str]:
    """Each root's label in run names: its folder name, numbered when two roots share one."""
    names = [root.name for root in roots]
    return [name if names.count(name) == 1 else f"{name}#{i + 1}" for i, name in enumerate(names)]


def list_runs(roots: Sequence[Path]) -> list[str]:
    """Run folders (those holding metrics.json and generations.jsonl) under each root, as "<root label>/<relative
    path>" ("<root label>" alone for a root that is itself a run), sorted per root."""
    found = []
    for root, label in zip(roots, _labels(roots)):
        if not root.is_dir():
            continue
        for metrics in sorted(root.rglob("metrics.json")):
            if (metrics.parent / "generations.jsonl").is_file():
                relative = metrics.parent.relative_to(root).as_posix()
                found.append(label if relative == "." else f"{label}/{relative}")
    return found


def resolve_run(roots: Sequence[Path], name: str) -> Path:
    """The folder of a listed run name; anything not listed under a root (`..`, an absolute path) is refused."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError("pick a run from the list first")
    for root, label in zip(roots, _labels(roots)):
        if name == label or name.startswith(f"{label}/"):
            folder = (root / name[len(label) + 1 :]).resolve()
            if folder.is_relative_to(root.resolve()) and (folder / "metrics.json").is_file():
                return folder
    shown = name if isinstance(name, str) and len(name) <= 200 else "that name"
    raise ValueError(f"{shown!r} is not a run listed here; pick one from the list "
                     f"(the app's run folders: {', '.join(_labels(roots))})")


@dataclass
class RunView:
    """One run, ready to show: summary Markdown, figures, and the per-item rows (filterable)."""

    run: RunResult
    summary: str
    figures: dict[str, go.Figure]

    def rows(self, modality: str = "all", mode: str = "all", only_refused: bool | None = None) -> list[list[Any]]:
        """Per-item answers as table rows (ROW_HEADERS), filtered by modality and mode."""
        return run_rows(self.run, modality, mode, only_refused)

    @property
    def modalities(self) -> list[str]:
        return sorted({key[1] for key in self.run.records})

    @property
    def modes(self) -> list[str]:
        return sorted({key[2] for key in self.run.records})


def run_rows(run: RunResult, modality: str = "all", mode: str = "all",
             only_refused: bool | None = None) -> list[list[Any]]:
    """A run's per-item answers as table rows (ROW_HEADERS), filtered by modality and mode; needs no figures, so
    the app's filters read the files and nothing more."""
    out = []
    for (item_id, rec_modality, rec_mode), record in sorted(run.records.items()):
        if modality not in ("all", rec_modality) or mode not in ("all", rec_mode):
            continue
        if record.get("skipped"):
            verdict = f"skipped: {public_text(str(record['skipped']))}"  # runs may record server paths
        else:
            verdict = record_verdict(record)
            if only_refused is not None and (verdict == "refused") != only_refused:
                continue
        alpha, score = record.get("alpha"), record.get("score")
        out.append([item_id, rec_modality, rec_mode, record.get("label", ""), record.get("category", ""), verdict,
                    "" if alpha is None else f"{alpha:.2f}", "" if score is None else f"{score:.2f}",
                    record.get("instruction", ""), record.get("text", "")])
    return out


def _summary(run: RunResult) -> str:
    m = run.metrics
    regap = m.get("regap", {})
    lines = [f"### Run `{run.name}`", "",
             f"- model **{m.get('model', '?')}**, {m.get('num_layers', '?')} layers; {m.get('num_items', '?')} items; "
             f"{m.get('max_new_tokens', '?')} new tokens; {m.get('elapsed_seconds', 0):.0f} s",
             f"- calibration: {m.get('calibration_source') or 'not recorded'} (hash {str(m.get('calibration_hash'))[:12]})",
             f"- judge: {_judge_words(m)}",
             f"- ReGap layers {regap.get('layers')}, probe {regap.get('probe_layer')}; α per mode: "
             f"`{json.dumps(regap.get('mode_strengths') or regap.get('strength'))}`"]
    if not m.get("per_layer", {}).get("auroc"):
        lines.append("- separability (AUROC, gap, accuracy at the text threshold): **not applicable**: the items "
                     "carry one label only (a harmful-only set: the rates stand on their own)")
    skipped = m.get("skipped_items") or []
    if skipped:
        lines.append(f"- {len(skipped)} generations skipped (not counted in any rate); see the table")
    lines.append("\nNo model is loaded to show this run: everything comes from the run folder's files.")
    return "\n".join(lines)


def _judge_words(metrics: dict[str, Any]) -> str:
    """Who decided what a refusal is, in a few words (the full description stays in metrics.json)."""
    judge = metrics.get("judge")
    if not isinstance(judge, dict):
        return f"phrase judge ({len(metrics.get('judge_phrases', []))} phrases)"
    if judge.get("kind") == "phrases":
        return f"phrase judge ({len(judge.get('phrases', []))} phrases)"
    return f"{judge.get('kind', 'model')} judge `{judge.get('id', '?')}`"


def read_run(roots: Sequence[Path], name: str) -> RunResult:
    """A listed run's files (`list_runs`), read; no figures (what the app's answer filters need)."""
    return load_run(resolve_run(roots, name), name=name)


def open_run(roots: Sequence[Path], name: str) -> RunView:
    """Load a listed run (`list_runs`) for display: summary, the rates and per-layer figures, per-item records."""
    run = read_run(roots, name)
    m = run.metrics
    per_layer = m.get("per_layer", {})
    figures = {
        "Refusal rates": rates_figure(m.get("refusal_rate", {}), m.get("refusal_rate_ci"), m.get("n")),
        "Separability per layer": separability_figure(per_layer.get("auroc", {}), per_layer.get("refusal_gap", {}),
                                                      per_layer.get("drift_norm", {}),
                                                      per_layer.get("cos_drift_refusal", {})),
    }
    return RunView(run, _summary(run), figures)
