"""The app's Export button: one analysis written as metrics (JSON, CSV), directions (zip), figures and a report.

Files go to a per-browser-session folder under the app's export root, named by a random id the server makes
(never a path from the client), each written atomically. The root is bounded (`prune_exports`): the folders of the
latest `AppSettings.exports_kept` sessions that exported, none older than `AppSettings.export_max_age_s`; the
app removes it at exit. What a visitor downloads is Gradio's own copy (its cache, cleaned by `delete_cache`), so
pruning here never cuts a download short.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from explorer.app.analysis import FIGURE_TITLES, describe_prompt, fmt
from explorer.app.ui import problem_message, warning_text
from explorer.app.ui_inputs import analysis_of
from explorer.app.ui_session import AppState
from explorer.core.storage import atomic_path, write_atomic
from explorer.geometry.layer_metrics import CALIBRATION_KEYS, SEPARATION_KEYS
from explorer.report.plots import write_report

__all__ = ["export", "prune_exports", "session_dir"]

_SESSION_ID = re.compile(r"[0-9a-f]{32}")


def session_dir(state: AppState, session_id: str | None) -> tuple[Path, str]:
    """The per-session export folder under the app's own temp root; ids are 32 hex digits, never paths."""
    sid = session_id if isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id) else uuid.uuid4().hex
    folder = state.export_root / sid
    folder.mkdir(parents=True, exist_ok=True)
    os.utime(folder)  # in use from now: the newest folder, never one a concurrent `prune_exports` removes as old
    return folder, sid


def prune_exports(root: Path, kept: int, max_age_s: float, current: Path | None = None) -> list[Path]:
    """Remove the session folders under `root` beyond the `kept` most recently written, and those older than
    `max_age_s`; never `current` (the folder being written). → the folders removed.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for age, name in enumerate(["new", "mid", "old"]):
    ...     (root / name).mkdir()
    ...     os.utime(root / name, (time.time() - 60 * age,) * 2)
    >>> sorted(p.name for p in prune_exports(root, kept=2, max_age_s=3600))
    ['old']
    >>> [p.name for p in prune_exports(root, kept=2, max_age_s=30, current=root / "new")]
    ['mid']
    """
    now = time.time()
    folders = []
    for path in root.iterdir() if root.is_dir() else ():
        try:
            if path.is_dir() and not path.is_symlink():
                folders.append((path.stat().st_mtime, path))
        except OSError:  # removed meanwhile
            continue
    folders.sort(key=lambda entry: entry[0], reverse=True)
    removed = []
    for rank, (mtime, path) in enumerate(folders):
        if path == current or (rank < kept and now - mtime <= max_age_s):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def export(state: AppState, session_id: str | None, text: str | None, image: Any, audio: Any, layer: Any, mode: str,
           strength: float, layers_text: str | None, method: str = "UMAP", plain_text: str | None = "",
           plain_info: str | None = "", corrected_text: str | None = "",
           corrected_info: str | None = "") -> tuple[list[str] | None, str, str]:
    """Write metrics (JSON, CSV), directions (zip), figures (HTML) and a one-page report. → (paths, session id, status)."""
    session = state.session
    folder, sid = session_dir(state, session_id)
    try:
        result, prompt, config, _ = analysis_of(state, text, image, audio, layer, mode, strength, layers_text, method)
    except Exception as err:  # noqa: BLE001
        return None, sid, warning_text(problem_message(err))
    metrics = {**result.metrics, "generations": {
        "plain": {"text": plain_text or "", "verdict": plain_info or ""},
        "corrected": {"text": corrected_text or "", "verdict": corrected_info or ""}}}
    paths = [folder / "metrics.json", folder / "metrics.csv", folder / "directions.zip", folder / "figures.html",
             folder / "report.html"]
    write_atomic(paths[0], json.dumps(metrics, indent=1))
    _write_csv(paths[1], result.metrics["per_layer"], result.metrics["prompt"])
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # a private folder: two exports never share files
        zipped = shutil.make_archive(str(Path(scratch) / "directions"), "zip", session.profile.save(Path(scratch) / "p"))
        with atomic_path(paths[2]) as tmp:
            shutil.copyfile(zipped, tmp)
    figures = {FIGURE_TITLES[name]: figure for name, figure in result.figures.items()}
    write_report(paths[3], f"Safety geometry figures: {session.model.name}", figures)
    summary = {
        "model": session.model.name, "layers": session.num_layers,
        "calibration": f"{len(session.calibration.items)} requests × {len(session.profile.modalities)} modalities",
        "prompt": describe_prompt(prompt), "correction": f"{config.mode}, strength {config.strength}, "
        f"layers {list(config.layers)}, probe {config.probe_layer}",
        "s(x) / α(x)": f"{fmt(result.metrics['prompt']['s_x'])} / {result.metrics['prompt']['alpha_x']:.2f}",
        "answer without correction": f"{plain_text or '(not generated)'} [{plain_info or ''}]",
        "answer with correction": f"{corrected_text or '(not generated)'} [{corrected_info or ''}]",
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    captions = {FIGURE_TITLES[name]: caption for name, caption in result.captions.items()}
    write_report(paths[4], "Safety Geometry Explorer: session report", figures, summary, captions)
    prune_exports(state.export_root, state.settings.exports_kept, state.settings.export_max_age_s, current=folder)
    return [str(p) for p in paths], sid, f"Exported {len(paths)} files."


def _write_csv(path: Path, per_layer: dict[str, Any], prompt: dict[str, Any]) -> None:
    """One row per metric × "<modality>/<mode>" × layer (the calibration geometry, keyed by modality alone, as mode
    "off"); AUROC rows carry their 95% bootstrap interval and the number of states measured."""
    series = [name for name in (*SEPARATION_KEYS, *CALIBRATION_KEYS, "drift_norm_corrected",
                                "cos_drift_refusal_corrected") if name != "auroc_ci"]
    intervals, counts = per_layer.get("auroc_ci", {}), per_layer.get("n", {})
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "modality", "mode", "layer", "value", "ci_low", "ci_high", "n"])
        for metric in series:
            for key, values in per_layer.get(metric, {}).items():
                modality, _, mode = key.partition("/")
                ci = intervals.get(key) if metric == "auroc" else None
                n = counts.get(key, "") if metric == "auroc" else ""
                writer.writerows([metric, modality, mode or "off", layer, value, *(ci[layer] if ci else ("", "")), n]
                                 for layer, value in enumerate(values))
        for name in ("score_per_layer", "score_per_layer_corrected"):
            for layer, value in enumerate(prompt.get(name) or []):
                mode = "corrected" if name.endswith("corrected") else "off"
                writer.writerow(["prompt_score", prompt["modality"], mode, layer, value, "", "", ""])
