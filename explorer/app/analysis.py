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
from explorer.correction.regap import CorrectionConfig
from explorer.geometry.formulas import axis_group_stats, group_key
from explorer.inputs.media import Prompt
from explorer.report.plots import (
    embedding_figure,
    refusal_axis_figure,
    separability_figure,
)

__all__ = ["Analysis", "compute_analysis", "describe_prompt", "fmt", "sentence_case"]



def describe_prompt(prompt: Prompt) -> str:
    return prompt.text + {"image": " [+ image]", "audio": " [+ audio]"}.get(prompt.modality, "")


@dataclass
class Analysis:
    figures: dict[str, Any]
    captions: dict[str, str]
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def compute_analysis(state: AppState, session: ModelSession, prompt: Prompt, config: CorrectionConfig, layer: int,
                     method: str = "UMAP") -> Analysis:
    """Figures, captions and metrics for one prompt and correction (raises on bad input)."""
    profile, cal = session.profile, session.calibration.states
    notes: list[str] = []
    before = session.capture([prompt])[0]
    after, alpha, score = None, 0.0, None
    if config.mode != "off" and prompt.modality != "text":
        result = session.capture_corrected([prompt], config)
        after, alpha, score = result.states[0], result.alphas[0], result.scores[0]
    elif prompt.modality == "text" and config.mode != "off":
        notes.append("Text input is never corrected (its drift from text is zero); compare an image or audio prompt.")
    corr = session.corrected_calibration(config)

    # (1) 2-D map of the selected layer
    use_umap = method.lower() == "umap" and state.umap_ready.is_set()
    if method.lower() == "umap" and not use_umap:
        notes.append("UMAP is still compiling in the background (first start only); showing PCA for now.")
    embed_method = "umap" if use_umap else "pca"
    rows = [cal.states[:, layer]] + ([corr.states[:, layer]] if corr is not None else [])
    rows += [before[layer][None]] + ([after[layer][None]] if after is not None else [])
    key = (layer, embed_method, config, prompt.modality, prompt.key, after is not None)
    coords = session.embedding(key, torch.cat(rows), embed_method)
    n_cal, n_corr = len(cal), len(corr) if corr is not None else 0
    instructions = cal.instructions + (corr.instructions if corr is not None else [])
    modalities = cal.modalities + (corr.modalities if corr is not None else [])
    labels = cal.labels + (corr.labels if corr is not None else [])
    flags = [False] * n_cal + [True] * n_corr
    shown = describe_prompt(prompt)
    highlights = [{"x": float(coords[n_cal + n_corr, 0]), "y": float(coords[n_cal + n_corr, 1]),
                   "name": "your prompt", "text": shown, "corrected": False}]
    if after is not None:
        highlights.append({"x": float(coords[-1, 0]), "y": float(coords[-1, 1]), "name": "your prompt (corrected)",
                           "text": shown, "corrected": True})
    fig_map = embedding_figure(coords[: n_cal + n_corr], instructions, modalities, labels, flags, highlights,
                               layer=layer, method="UMAP" if use_umap else "PCA")

    # (2) refusal axis per layer
    groups: dict[str, dict[str, list[float]]] = {}
    for batch, suffix in ((cal, ""), (corr, " (corrected)")):
        if batch is not None:
            names = [group_key(m, y) + suffix for m, y in zip(batch.modalities, batch.labels)]
            groups.update(axis_group_stats(profile.score(batch.states), names))
    trajectories = {"your prompt": profile.score(before[None])[0].tolist()}
    if after is not None:
        trajectories["your prompt (corrected)"] = profile.score(after[None])[0].tolist()
    fig_axis = refusal_axis_figure(groups, trajectories)

    # (3) separability
    per_layer = session.layer_metrics(corr, config.mode)
    fig_sep = separability_figure(per_layer["auroc"], per_layer["gap"], per_layer["drift_norm"],
                                  per_layer["cos_drift_refusal"])

    probe = config.probe_layer if config.probe_layer is not None else session.default_layer()
    s_before = trajectories["your prompt"][probe]
    s_after = trajectories.get("your prompt (corrected)", [None] * session.num_layers)[probe]
    captions = _captions(session, prompt, config, layer, probe, s_before, s_after, per_layer, use_umap)
    metrics = {
        "model": session.model.name, "num_layers": session.num_layers, "calibration_states": len(cal),
        "prompt": {"text": prompt.text, "modality": prompt.modality, "score_per_layer": trajectories["your prompt"],
                   "score_per_layer_corrected": trajectories.get("your prompt (corrected)"),
                   "s_x": score, "alpha_x": alpha},
        "correction": {"mode": config.mode, "strength": config.strength, "layers": list(config.layers),
                       "probe_layer": config.probe_layer, "positions": config.positions, "rule": config.rule},
        "layer_shown": layer, "per_layer": per_layer, "embedding": "UMAP" if use_umap else "PCA",
    }
    figures = {"Where prompts sit (2-D map)": fig_map, "Refusal axis per layer": fig_axis,
               "Separability and drift per layer": fig_sep}
    return Analysis(figures, captions, metrics, notes)


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
    return {"map": map_caption, "axis": axis_caption, "separability": sep_caption}
