"""One analysis in the app: a prompt and a correction → the three figures, their captions and the metrics.

The 2-D map of the calibration states (and the same states re-captured under the correction) at one layer, the
refusal axis per layer (`geometry.axis_group_stats`, the same statistic as the evaluation report), and the
separability and drift per layer; captions that read the numbers out in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from explorer.app.ui_session import AppState, ModelSession
from explorer.correction.regap import CorrectionConfig, applied_positions
from explorer.geometry.formulas import axis_group_stats, group_key
from explorer.geometry.profile import Profile
from explorer.inputs.media import Prompt
from explorer.model.states import StateBatch
from explorer.report.plots import (
    embedding_figure,
    refusal_axis_figure,
    separability_figure,
)

__all__ = ["Analysis", "compute_analysis", "describe_prompt", "fmt", "sentence_case"]


def describe_prompt(prompt: Prompt) -> str:
    return prompt.text + {"image": " [+ image]", "audio": " [+ audio]"}.get(prompt.modality, "")


#: The app's figures by name: the page shows each as the components `fig_<name>` and `cap_<name>` (in this order in
#: the Analyse event's outputs), and the Export's reports title it so. A figure and its caption share the name.
FIGURE_TITLES = {"map": "Where prompts sit (2-D map)", "axis": "Refusal axis per layer",
                 "sep": "Separability and drift per layer"}


@dataclass
class Analysis:
    figures: dict[str, Any]  # by the names of FIGURE_TITLES
    captions: dict[str, str]  # by the same names
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def compute_analysis(state: AppState, session: ModelSession, prompt: Prompt, config: CorrectionConfig, layer: int,
                     method: str = "UMAP") -> Analysis:
    """Figures, captions and metrics for one prompt and correction (raises on bad input)."""
    notes: list[str] = []
    before = session.capture([prompt])[0]
    after, alpha, score = None, 0.0, None
    if config.mode != "off" and prompt.modality != "text":
        result = session.capture_corrected([prompt], config)
        after, alpha, score = result.states[0], result.alphas[0], result.scores[0]
    elif prompt.modality == "text" and config.mode != "off":
        notes.append("Text input is never corrected (its drift from text is zero); compare an image or audio prompt.")
    corr = session.corrected_calibration(config)
    use_umap = method.lower() == "umap" and state.umap_ready.is_set()
    if method.lower() == "umap" and not use_umap:
        notes.append("UMAP is still compiling in the background (first start only); showing PCA for now.")
    fig_map = _map_figure(session, prompt, config, layer, corr, before, after, use_umap)
    fig_axis, trajectories = _axis_figure(session.profile, session.calibration.states, corr, before, after)
    per_layer = session.layer_metrics(corr, config.mode)
    fig_sep = separability_figure(per_layer["auroc"], per_layer["refusal_gap"], *_drift_series(per_layer))
    probe = config.probe_layer if config.probe_layer is not None else session.default_layer()
    s_before = trajectories["your prompt"][probe]
    s_after = trajectories.get("your prompt (corrected)", [None] * session.num_layers)[probe]
    captions = _captions(session, prompt, config, layer, probe, s_before, s_after, per_layer, use_umap)
    metrics = {
        "model": session.model.name, "num_layers": session.num_layers, "hidden_size": session.model.hidden_size,
        "calibration_hash": session.profile.calibration_hash, "calibration_source": session.source,
        "calibration_states": len(session.calibration.states),
        "prompt": {"text": prompt.text, "modality": prompt.modality, "score_per_layer": trajectories["your prompt"],
                   "score_per_layer_corrected": trajectories.get("your prompt (corrected)"),
                   "s_x": score, "alpha_x": alpha},
        "regap": _regap_block(prompt, config, score, alpha),
        "layer_shown": layer, "per_layer": per_layer, "embedding": "UMAP" if use_umap else "PCA",
    }
    return Analysis({"map": fig_map, "axis": fig_axis, "sep": fig_sep}, captions, metrics, notes)


def _regap_block(prompt: Prompt, config: CorrectionConfig, score: float | None, alpha: float) -> dict[str, Any]:
    """The correction as metrics.json's `regap` records it for `eval` (README, "DIR/metrics.json"), for this one
    prompt: its s(x) and α(x) are the run's single `per_item` entry."""
    strengths = {prompt.modality: config.for_modality(prompt.modality).strength} if prompt.modality != "text" else {}
    return {
        "layers": list(config.layers), "strength": config.strength, "probe_layer": config.probe_layer,
        "positions": config.positions, "rule": config.rule, "modality_strengths": dict(config.modality_strengths),
        "threshold": config.threshold, "modality_thresholds": dict(config.modality_thresholds),
        "per_item": [{"id": "your prompt", "modality": prompt.modality, "mode": config.mode, "s": score,
                      "alpha": alpha}] if score is not None else [],
        "mode_strengths": {config.mode: strengths} if config.mode != "off" else {},
        "mode_positions": {config.mode: applied_positions(config.mode, config.positions)} if config.mode != "off" else {},
    }


def _map_figure(session: ModelSession, prompt: Prompt, config: CorrectionConfig, layer: int,
                corr: StateBatch | None, before: torch.Tensor, after: torch.Tensor | None, use_umap: bool) -> Any:
    """(1) The 2-D map of one layer: calibration states (and as corrected), the prompt (and as corrected)."""
    cal = session.calibration.states
    embed_method = "umap" if use_umap else "pca"
    rows = [cal.states[:, layer]] + ([corr.states[:, layer]] if corr is not None else [])
    rows += [before[layer][None]] + ([after[layer][None]] if after is not None else [])
    key = (layer, embed_method, config, prompt.modality, prompt.key, after is not None)
    coords = session.embedding(key, torch.cat(rows), embed_method)
    batches = [cal] + ([corr] if corr is not None else [])
    n_shown = sum(len(b) for b in batches)
    shown = describe_prompt(prompt)
    highlights = [{"x": float(coords[n_shown, 0]), "y": float(coords[n_shown, 1]),
                   "name": "your prompt", "text": shown, "corrected": False}]
    if after is not None:
        highlights.append({"x": float(coords[-1, 0]), "y": float(coords[-1, 1]), "name": "your prompt (corrected)",
                           "text": shown, "corrected": True})
    return embedding_figure(coords[:n_shown], [t for b in batches for t in b.instructions],
                            [m for b in batches for m in b.modalities], [y for b in batches for y in b.labels],
                            [False] * len(cal) + [True] * (n_shown - len(cal)), highlights, layer=layer,
                            method="UMAP" if use_umap else "PCA")


def _axis_figure(profile: Profile, cal: StateBatch, corr: StateBatch | None, before: torch.Tensor,
                 after: torch.Tensor | None) -> tuple[Any, dict[str, list[float]]]:
    """(2) The refusal axis per layer: each group's mean ± std and the prompt's trajectory (and as corrected)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for batch, suffix in ((cal, ""), (corr, " (corrected)")):
        if batch is not None:
            names = [group_key(m, y) + suffix for m, y in zip(batch.modalities, batch.labels)]
            groups.update(axis_group_stats(profile.score(batch.states), names))
    trajectories = {"your prompt": profile.score(before[None])[0].tolist()}
    if after is not None:
        trajectories["your prompt (corrected)"] = profile.score(after[None])[0].tolist()
    return refusal_axis_figure(groups, trajectories), trajectories


def _drift_series(per_layer: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(3) The drift panels' series: the calibration drift ("<modality>/off") and the drift left after the
    correction ("<modality>/<mode>")."""
    norm = {f"{m}/off": v for m, v in per_layer["drift_norm"].items()} | per_layer["drift_norm_corrected"]
    cos = ({f"{m}/off": v for m, v in per_layer["cos_drift_refusal"].items()}
           | per_layer["cos_drift_refusal_corrected"])
    return norm, cos


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _captions(session: ModelSession, prompt: Prompt, config: CorrectionConfig, layer: int, probe: int,
              s_before: float, s_after: float | None, per_layer: dict, use_umap: bool) -> dict[str, str]:
    side = "harmful" if s_before >= 0.5 else "harmless"
    map_caption = (
        f"Each point is one calibration request at layer {layer} ({'UMAP' if use_umap else 'PCA'} map); colour is "
        f"how it was shown (text, image, audio), × harmful, ○ harmless; open markers were re-captured with the "
        f"correction on. The star is your prompt, the diamond the same prompt after correction.")
    axis_caption = (
        f"The height is how far each layer pushes towards refusing: 0 is where harmless text requests sit, 1 where "
        f"harmful text requests sit. At the probe layer {probe} your prompt scores {fmt(s_before)} (the {side} side)"
        + (f", {fmt(s_after)} after the correction." if s_after is not None else "."))
    other = [m for m in session.profile.modalities if m != "text"]
    sep_bits = []
    for modality in other:
        text_auc = per_layer["auroc"]["text/off"][layer]
        raw = per_layer["auroc"][f"{modality}/off"][layer]
        fixed = per_layer["auroc"].get(f"{modality}/{config.mode}", [None] * session.num_layers)[layer]
        sep_bits.append(f"at layer {layer} the refusal direction separates harmful from harmless {modality} requests "
                        f"with AUROC {fmt(raw)} (text: {fmt(text_auc)})"
                        + (f", {fmt(fixed)} with the {config.mode} correction" if fixed is not None else ""))
    sep_caption = ("AUROC 1 means the refusal direction tells every harmful request from every harmless one; 0.5 is "
                   "chance. The drift panels show how far a modality moves the states away from text and whether "
                   "that move points along the refusal direction. " + (sentence_case("; ".join(sep_bits)) if sep_bits else ""))
    return {"map": map_caption, "axis": axis_caption, "sep": sep_caption}
