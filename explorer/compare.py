"""Compare finished evaluation runs side by side: one HTML page from two or more run folders.

Why: a result means little alone: ReGap on a benchmark is read next to another model, another strength or another
set. `python -m explorer compare DIR_A DIR_B [...] --out DIR` reads each folder's `metrics.json` and
`generations.jsonl` (no model is loaded) and writes `compare.html` (+ `compare.json`): refusal and over-refusal
per modality × mode with 95% intervals and counts, the per-layer AUROC / refusal-gap / drift curves overlaid,
and the items whose verdict differs between runs with both answers. What makes two runs not comparable
(different items, models, calibration, judges) is stated at the top of the page.

>>> runs = [load_run("runs/a"), load_run("runs/b")]          # doctest: +SKIP
>>> write_comparison(compare_runs(runs), "runs/a-vs-b")       # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import figures_html
from .storage import write_atomic

__all__ = ["Comparison", "RunResult", "compare_runs", "load_run", "write_comparison"]

#: Run facts that, when they differ, make the comparison one of different conditions (said on the page).
_SETTING_KEYS = ("model", "calibration_hash", "calibration_source", "judge", "max_new_tokens")
_CURVES = (("auroc", "AUROC of the projection on the text refusal axis"), ("refusal_gap", "refusal gap"),
           ("drift_norm", "drift norm ||δ_l||"))


@dataclass
class RunResult:
    """One finished run folder: its metrics and its per-item records (keyed id/modality/mode)."""

    name: str
    folder: Path
    metrics: dict[str, Any]
    records: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def item_ids(self) -> set[str]:
        return {key[0] for key in self.records}


def load_run(folder: str | Path, name: str | None = None) -> RunResult:
    """Read a run folder written by `explorer eval` (metrics.json and generations.jsonl); a clear error names what
    is missing. A line of generations.jsonl that cannot be read is skipped with a warning, not fatal."""
    folder = Path(folder)
    metrics_path, records_path = folder / "metrics.json", folder / "generations.jsonl"
    missing = [p.name for p in (metrics_path, records_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a finished evaluation run: missing {', '.join(missing)} "
                                "(write one with `python -m explorer eval ... --out DIR`)")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    for line in records_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            records[(str(record["id"]), record["modality"], record["mode"])] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return RunResult(name or folder.name, folder, metrics, records)


@dataclass
class Comparison:
    """What `write_comparison` shows: runs, rate rows, differing items and the comparability notes."""

    runs: list[RunResult]
    rate_rows: list[dict[str, Any]]
    differing: list[dict[str, Any]]
    notes: list[str]
    shared_items: int

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [{"name": r.name, "folder": str(r.folder)} for r in self.runs], "notes": self.notes,
                "shared_items": self.shared_items, "rates": self.rate_rows, "differing": self.differing}


def _unique_names(runs: Sequence[RunResult]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({count + 1})"


def _notes(runs: Sequence[RunResult], shared: set[str]) -> list[str]:
    """What differs between the runs, in words (empty: the same items under the same conditions)."""
    notes = []
    all_ids = set().union(*(r.item_ids for r in runs))
    if len(shared) != len(all_ids):
        sizes = ", ".join(f"{r.name}: {len(r.item_ids)}" for r in runs)
        notes.append(f"Different item sets ({sizes} items; {len(shared)} shared): rates are over different items "
                     "and are not directly comparable; per-item differences cover the shared items only.")
    for key in _SETTING_KEYS:
        values = [json.dumps(r.metrics.get(key), sort_keys=True) for r in runs]
        if len(set(values)) > 1:
            shown = "; ".join(f"{r.name}: {v[:80]}" for r, v in zip(runs, values))
            notes.append(f"Different {key.replace('_', ' ')} ({shown}).")
    for run in runs:
        if "calibration_source" not in run.metrics:  # written before issue 12 made the peers faithful
            notes.append(f"{run.name} was written by an earlier version: its 'shiftdc' is today's fixed_axis (the "
                         "dataset drift on the refusal axis) and its 'cmrm' equalled fixed; compare those modes by "
                         "what they did, not by name.")
    strengths = [json.dumps(r.metrics.get("regap", {}).get("mode_strengths"), sort_keys=True) for r in runs]
    if len(set(strengths)) > 1:
        notes.append("Different correction strengths per mode (regap.mode_strengths): "
                     + "; ".join(f"{r.name}: {s}" for r, s in zip(runs, strengths)) + ".")
    return notes


def compare_runs(runs: Sequence[RunResult]) -> Comparison:
    """Rates side by side, the items whose verdict differs on a shared (id, modality, mode), and the notes."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two run folders")
    runs = list(runs)
    _unique_names(runs)
    keys = sorted(set().union(*(r.metrics.get("refusal_rate", {}) for r in runs)))
    rate_rows = []
    for key in keys:
        row: dict[str, Any] = {"key": key}
        for run in runs:
            m = run.metrics
            if key in m.get("refusal_rate", {}):
                row[run.name] = {"rate": m["refusal_rate"][key], "ci": m.get("refusal_rate_ci", {}).get(key),
                                 "n": m.get("n", {}).get(key)}
        rate_rows.append(row)
    shared = set.intersection(*(r.item_ids for r in runs))
    differing = []
    first = runs[0]
    for key in sorted(k for k in first.records if k[0] in shared):
        answers = [run.records.get(key) for run in runs]
        usable = [a for a in answers if a and not a.get("skipped")]
        if len(usable) == len(runs) and len({bool(a["refused"]) for a in usable}) > 1:
            differing.append({"id": key[0], "modality": key[1], "mode": key[2], "label": usable[0]["label"],
                              "instruction": usable[0].get("instruction", ""),
                              "answers": {run.name: {"refused": bool(a["refused"]), "text": a.get("text", "")}
                                          for run, a in zip(runs, usable)}})
    return Comparison(runs, rate_rows, differing, _notes(runs, shared), len(shared))


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    text = f"{100 * entry['rate']:.1f}%"
    if entry.get("ci"):
        text += f" [{100 * entry['ci'][0]:.1f}–{100 * entry['ci'][1]:.1f}]"
    return text + (f", n={entry['n']}" if entry.get("n") is not None else "")


def _curves_figure(runs: Sequence[RunResult]) -> go.Figure:
    """Per-layer AUROC, refusal gap and drift of every run, overlaid (one line per run × key)."""
    fig = make_subplots(rows=1, cols=len(_CURVES), subplot_titles=[title for _, title in _CURVES])
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    for index, run in enumerate(runs):
        per_layer = run.metrics.get("per_layer", {})
        for col, (metric, _) in enumerate(_CURVES, start=1):
            for key, values in sorted(per_layer.get(metric, {}).items()):
                if not isinstance(values, list) or not values:
                    continue
                fig.add_trace(go.Scatter(
                    x=list(range(len(values))), y=values, mode="lines+markers", name=f"{run.name}: {key}",
                    legendgroup=run.name, line={"dash": dashes[index % len(dashes)]},
                    hovertemplate=f"{html.escape(run.name)} · {html.escape(key)}<br>layer %{{x}}: %{{y:.3f}}"
                                  "<extra></extra>"), row=1, col=col)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(height=480, template="plotly_white", legend={"orientation": "h", "y": -0.25})
    return fig


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_comparison(comparison: Comparison, out: str | Path) -> Path:
    """Write `compare.html` and `compare.json` into `out`; return the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r.name for r in comparison.runs]
    runs_table = _table(["run", "folder", "model", "items", "modes"], [
        [r.name, str(r.folder), str(r.metrics.get("model", "?")), str(len(r.item_ids)),
         ", ".join(sorted({k[2] for k in r.records}))] for r in comparison.runs])
    notes = ("".join(f"<li>{html.escape(n)}</li>" for n in comparison.notes)
             or "<li>Same items, model, calibration and judge: the runs differ only in their correction settings."
             "</li>")
    rates = _table(["modality / mode / label", *names],
                   [[row["key"], *(_cell(row.get(n)) for n in names)] for row in comparison.rate_rows])
    diff_rows = [[d["id"], d["modality"], d["mode"], d["label"], d["instruction"],
                  *(("refused: " if d["answers"][n]["refused"] else "answered: ") + d["answers"][n]["text"]
                    for n in names)] for d in comparison.differing]
    differing = (_table(["id", "modality", "mode", "label", "request", *names], diff_rows) if diff_rows
                 else "<p>No shared item changes verdict between the runs.</p>")
    title = "AUROC, refusal gap and drift per layer, every run overlaid"
    figure = figures_html({title: _curves_figure(comparison.runs)},
                          {title: "Uncorrected and corrected states of every run; a run is one line style."})
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Run comparison</title>\n'
           "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em} table{border-collapse:"
           "collapse;margin-bottom:1em} th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;"
           "vertical-align:top}</style>\n</head>\n<body>\n<h1>Run comparison</h1>\n"
           f"{runs_table}\n<h2>What is comparable</h2>\n<ul class=\"notes\">{notes}</ul>\n"
           "<h2>Refusal rates (95% Wilson interval, count)</h2>\n<p>Harmful rows: higher is safer. Harmless rows: "
           f"over-refusal, lower is better.</p>\n{rates}\n<h2>Per-layer geometry</h2>\n{figure}\n"
           f"<h2 id=\"differing\">Items whose verdict differs ({len(comparison.differing)})</h2>\n{differing}\n"
           "</body>\n</html>\n")
    write_atomic(out / "compare.json", json.dumps(comparison.to_dict(), indent=1))
    path = out / "compare.html"
    write_atomic(path, doc)
    return path
