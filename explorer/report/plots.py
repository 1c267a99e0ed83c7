"""Plotly figures for the Safety Geometry Explorer: pure functions from plain arrays to figures.

Visual vocabulary, shared by every figure:
- colour = modality (text blue, image orange, audio green); corrected data keeps its modality colour;
- marker symbol = label (harmful ``x``, harmless ``circle``); corrected points use the open variants;
- line dash = label or mode (harmful / uncorrected solid, harmless / corrected dashed);
- the user's prompt is a large star before correction and a large diamond after it.

Empty inputs give a figure that says "No data yet"; NaN values are drawn as gaps; inputs of mismatched
lengths raise ``ValueError`` naming the offending key.

>>> import numpy as np
>>> fig = embedding_figure(np.zeros((1, 2)), ["hi"], ["text"], ["harmless"], layer=3, method="PCA")
>>> [t.name for t in fig.data]
['text · harmless']
"""

from __future__ import annotations

import html
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.core.storage import write_atomic

__all__ = [
    "MODALITY_COLORS", "LABEL_SYMBOLS", "NO_DATA", "embedding_figure", "refusal_axis_figure",
    "separability_figure", "rates_figure", "figures_html", "write_report",
]

MODALITY_COLORS: dict[str, str] = {"text": "#1f77b4", "image": "#ff7f0e", "audio": "#2ca02c"}
LABEL_SYMBOLS: dict[str, str] = {"harmful": "x", "harmless": "circle"}
NO_DATA = "No data yet"
_OTHER_COLOR = "#7f7f7f"
_PROMPT_COLORS = {False: "#222222", True: "#9467bd"}  # the user's prompt: before / after correction
_MODE_PATTERNS = {"off": "", "fixed": "/", "fixed_axis": "|", "adaptive": "x", "adaptive_raw": "-", "shiftdc": ".",
                  "cmrm": "\\", "cmrm_sample": "+"}
_TEMPLATE = "plotly_white"


def _color(modality: str) -> str:
    return MODALITY_COLORS.get(modality, _OTHER_COLOR)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _legend_below(fig: go.Figure, base_height: int = 460, per_row: int = 4) -> go.Figure:
    """Every legend entry visible: a horizontal legend under the plot, the figure tall enough for its rows
    (a legend at the side scrolls, and its lower entries are cut off in the page and in exported reports)."""
    entries = sum(1 for trace in fig.data if trace.showlegend is not False and trace.name)
    rows = max(1, math.ceil(entries / per_row))
    fig.update_layout(height=base_height + 26 * rows, margin={"b": 90 + 26 * rows},
                      legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.2, "yanchor": "top",
                              "entrywidth": 230, "entrywidthmode": "pixels"})
    return fig


def _hover_text(text: str, width: int = 60) -> str:
    """Escape user text for plotly's HTML-ish hover labels and wrap long lines."""
    lines = textwrap.wrap(str(text), width) or [""]
    return "<br>".join(html.escape(line) for line in lines)


def _no_data(fig: go.Figure, row: int | None = None, col: int | None = None) -> go.Figure:
    """Put a centred "No data yet" note on the figure (or on one subplot)."""
    fig.add_annotation(text=NO_DATA, x=0.5, y=0.5, xref="x domain", yref="y domain", showarrow=False,
                       font={"size": 16, "color": _OTHER_COLOR}, row=row, col=col)
    return fig


def _floats(key: str, values: Sequence[float], n: int | None = None, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if n is not None and arr.size != n:
        raise ValueError(f"{key!r}: {what} has {arr.size} entries, expected {n}")
    return arr


def _nan_to_none(arr: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in arr]


def _split_key(key: str) -> tuple[str, str, bool]:
    """'image/harmful (corrected)' -> ('image', 'harmful (corrected)', True); 'image/off' -> (.., False)."""
    modality, _, rest = key.partition("/")
    corrected = "corrected" in rest or rest.split(" ")[0] not in ("", "off", "harmful", "harmless")
    return modality, rest, corrected


def embedding_figure(coords: np.ndarray, instructions: Sequence[str], modalities: Sequence[str],
                     labels: Sequence[str], corrected: Sequence[bool] | None = None,
                     highlights: Sequence[Mapping[str, object]] | None = None, *, layer: int,
                     method: str) -> go.Figure:
    """Scatter of one layer's 2-D embedding (UMAP or PCA) of the last-token states.

    Args:
        coords: ``[n, 2]`` embedding coordinates.
        instructions, modalities, labels: one entry per point.
        corrected: per point, whether the state was taken with a drift correction (open markers).
        highlights: the user's prompt, dicts ``{"x", "y", "name", "text"}`` with optional ``"corrected"``
            (default: whether "corrected" occurs in the name) drawn as a star (before) / diamond (after).
        layer: the decoder layer shown; method: the embedding method's name, for the title.

    Returns:
        One trace per (modality, label, corrected) group, then one per highlight.
    """
    pts = np.asarray(coords, dtype=float)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"'coords' must have shape [n, 2], got {pts.shape}")
    n = pts.shape[0]
    flags = [False] * n if corrected is None else [bool(c) for c in corrected]
    for name, seq in (("instructions", instructions), ("modalities", modalities), ("labels", labels),
                      ("corrected", flags)):
        if len(seq) != n:
            raise ValueError(f"{name!r} has {len(seq)} entries but coords has {n} points")
    fig = go.Figure()
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i in range(n):
        groups.setdefault((modalities[i], labels[i], flags[i]), []).append(i)
    order = {"text": 0, "image": 1, "audio": 2}
    for (mod, lab, corr) in sorted(groups, key=lambda g: (order.get(g[0], 9), g[0], g[1], g[2])):
        idx = groups[(mod, lab, corr)]
        symbol = LABEL_SYMBOLS.get(lab, "square") + ("-open" if corr else "")
        fig.add_trace(go.Scatter(
            x=_nan_to_none(pts[idx, 0]), y=_nan_to_none(pts[idx, 1]), mode="markers",
            name=f"{mod} · {lab}" + (" (corrected)" if corr else ""), legendgroup=f"{mod}/{lab}",
            marker={"color": _color(mod), "symbol": symbol, "size": 8, "opacity": 0.8,
                    "line": {"width": 1.5 if corr else 0, "color": _color(mod)}},
            text=[_hover_text(instructions[i]) for i in idx],
            hovertemplate=(f"%{{text}}<br><i>{html.escape(mod)} · {html.escape(lab)}"
                           f"{' · corrected' if corr else ''} · layer {layer}</i><extra></extra>")))
    for h in highlights or []:
        corr = bool(h.get("corrected", "corrected" in str(h.get("name", "")).lower()))
        name = str(h.get("name", "your prompt (corrected)" if corr else "your prompt"))
        fig.add_trace(go.Scatter(
            x=[h.get("x")], y=[h.get("y")], mode="markers", name=name,
            marker={"symbol": "diamond" if corr else "star", "size": 20, "color": _PROMPT_COLORS[corr],
                    "line": {"width": 1.5, "color": "white"}},
            text=[_hover_text(str(h.get("text", "")))],
            hovertemplate=f"<b>{html.escape(name)}</b><br>%{{text}}<br><i>layer {layer}</i><extra></extra>"))
    fig.update_layout(template=_TEMPLATE, legend_title_text="modality · label",
                      title=f"Where prompts sit at layer {layer} ({method} map of the last-token state)",
                      xaxis_title=f"{method} dimension 1", yaxis_title=f"{method} dimension 2")
    return _legend_below(fig) if fig.data else _no_data(fig)


def _band(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[list, list]:
    """Closed polygons around each run of finite values, separated by None (plotly fills each)."""
    bx: list[float | None] = []
    by: list[float | None] = []
    ok = np.isfinite(lo) & np.isfinite(hi)
    i = 0
    while i < len(x):
        if not ok[i]:
            i += 1
            continue
        j = i
        while j < len(x) and ok[j]:
            j += 1
        seg = slice(i, j)
        bx += [*x[seg].tolist(), *x[seg][::-1].tolist(), None]
        by += [*hi[seg].tolist(), *lo[seg][::-1].tolist(), None]
        i = j
    return bx[:-1], by[:-1]


def refusal_axis_figure(group_stats: Mapping[str, Mapping[str, Sequence[float]]],
                        trajectories: Mapping[str, Sequence[float]] | None = None) -> go.Figure:
    """Position on the refusal direction per layer: group means with ±1 std bands, and the user's prompt.

    Args:
        group_stats: ``{"text/harmful": {"mean": [L], "std": [L]}, "image/harmful (corrected)": ...}``.
            Harmful groups are solid, harmless dashed; corrected groups get open markers.
        trajectories: e.g. ``{"your prompt": [L], "your prompt (corrected)": [L]}``, drawn bold.

    Returns:
        Per group a band trace ``"<key> ±1 std"`` followed by a mean trace ``"<key>"``; then trajectories.
    """
    fig = go.Figure()
    for key, stats in group_stats.items():
        mean = _floats(key, stats.get("mean", []), what="mean")
        std = _floats(key, stats.get("std", np.zeros_like(mean)), mean.size, what="std")
        mod, rest, corr = _split_key(key)
        color, x = _color(mod), np.arange(mean.size, dtype=float)
        bx, by = _band(x, mean - std, mean + std)
        fig.add_trace(go.Scatter(x=bx, y=by, fill="toself", fillcolor=_rgba(color, 0.15),
                                 line={"width": 0}, mode="lines", hoverinfo="skip", name=f"{key} ±1 std",
                                 legendgroup=key, showlegend=False))
        fig.add_trace(go.Scatter(
            x=x, y=_nan_to_none(mean), mode="lines+markers" if corr else "lines", name=key, legendgroup=key,
            line={"color": color, "width": 2, "dash": "dash" if "harmless" in rest else "solid"},
            marker={"symbol": "circle-open", "size": 7, "color": color},
            customdata=std, hovertemplate=(f"<b>{html.escape(key)}</b><br>layer %{{x}}<br>"
                                           "mean %{y:.3f} ± %{customdata:.3f}<extra></extra>")))
    for name, values in (trajectories or {}).items():
        y = _floats(name, values)
        corr = "corrected" in name.lower()
        fig.add_trace(go.Scatter(
            x=np.arange(y.size), y=_nan_to_none(y), mode="lines+markers", name=name,
            line={"color": _PROMPT_COLORS[corr], "width": 4, "dash": "dash" if corr else "solid"},
            marker={"symbol": "diamond" if corr else "star", "size": 11, "color": _PROMPT_COLORS[corr]},
            hovertemplate=f"<b>{html.escape(name)}</b><br>layer %{{x}}<br>%{{y:.3f}}<extra></extra>"))
    fig.update_layout(template=_TEMPLATE, hovermode="closest",
                      title="How strongly each layer pushes towards refusal",
                      xaxis_title="layer", yaxis_title="position on the refusal direction")
    return _legend_below(fig) if fig.data else _no_data(fig)


_SEP_TITLES = ("Can the refusal direction tell harmful from harmless? (AUROC)",
               "Refusal gap: harmful minus harmless on the refusal direction",
               "How far each modality drifts from text (drift size)",
               "Does the drift point along the refusal direction? (cosine)")


def separability_figure(auroc: Mapping[str, Sequence[float]], gap: Mapping[str, Sequence[float]],
                        drift_norm: Mapping[str, Sequence[float]],
                        cos_drift_refusal: Mapping[str, Sequence[float]]) -> go.Figure:
    """2×2 panels per layer: AUROC, refusal gap (keys ``"<modality>/<mode>"``; corrected modes dashed),
    drift norm and cos(drift, refusal) (keys = modality). AUROC has a dotted 0.5 chance line, the cosine a
    y = 0 reference line. Trace names are the keys; a key's legend entry is shown once."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=_SEP_TITLES, horizontal_spacing=0.1,
                        vertical_spacing=0.14)
    shown: set[str] = set()
    panels = ((auroc, 1, 1, "AUROC"), (gap, 1, 2, "gap"), (drift_norm, 2, 1, "‖drift‖"),
              (cos_drift_refusal, 2, 2, "cos"))
    for data, row, col, what in panels:
        for key, values in data.items():
            y = _floats(key, values)
            mod, _, corr = _split_key(key)
            fig.add_trace(go.Scatter(
                x=np.arange(y.size), y=_nan_to_none(y), mode="lines+markers", name=key, legendgroup=key,
                showlegend=key not in shown, marker={"size": 5},
                line={"color": _color(mod), "dash": "dash" if corr else "solid"},
                hovertemplate=f"<b>{html.escape(key)}</b><br>layer %{{x}}<br>{what} %{{y:.3f}}<extra></extra>",
            ),
                row=row, col=col)
            shown.add(key)
        if not data:
            _no_data(fig, row, col)
        fig.update_xaxes(title_text="layer", row=row, col=col)
        fig.update_yaxes(title_text=what, row=row, col=col)
    fig.update_yaxes(range=[0.4, 1.02], row=1, col=1)
    fig.add_hline(y=0.5, line={"dash": "dot", "color": _OTHER_COLOR}, row=1, col=1,
                  exclude_empty_subplots=False, annotation_text="chance")
    fig.add_hline(y=0, line={"color": _OTHER_COLOR, "width": 1}, row=2, col=2,
                  exclude_empty_subplots=False)
    fig.update_layout(template=_TEMPLATE, height=720,
                      title="Why the safety geometry collapses, layer by layer")
    return fig


def rates_figure(
    refusal_rate: Mapping[str, float],
    intervals: Mapping[str, Sequence[float]] | None = None,
    counts: Mapping[str, int] | None = None,
) -> go.Figure:
    """Refusal rates as grouped bars: keys ``"<modality>/<mode>/<label>"``, values fractions in [0, 1].

    Left panel: harmful requests refused (safety, higher is safer); right: harmless requests refused
    (over-refusal, lower is better). x = modality (bar colour), one bar group per mode (bar pattern).
    `intervals` (same keys, [low, high]) draw 95% error bars; `counts` (same keys) print "n" under each rate.
    """
    intervals, counts = intervals or {}, counts or {}
    cells: dict[str, dict[str, dict[str, float]]] = {}  # mode -> label -> modality -> value
    modalities: list[str] = []
    for key, value in refusal_rate.items():
        parts = key.split("/")
        if len(parts) != 3:
            raise ValueError(f"{key!r}: expected '<modality>/<mode>/<label>', e.g. 'image/adaptive/harmful'")
        mod, mode, lab = parts
        cells.setdefault(mode, {}).setdefault(lab, {})[mod] = float(value)
        if mod not in modalities:
            modalities.append(mod)
    modalities.sort(key=lambda m: ({"text": 0, "image": 1, "audio": 2}.get(m, 9), m))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=(
        "Harmful requests refused (safety: higher is safer)",
        "Harmless requests refused (over-refusal: lower is better)"))
    for k, (mode, by_label) in enumerate(cells.items()):
        for col, lab in ((1, "harmful"), (2, "harmless")):
            vals = by_label.get(lab, {})
            if not vals:
                continue
            y = [vals.get(m, math.nan) for m in modalities]
            keys = [f"{m}/{mode}/{lab}" for m in modalities]
            ci = [intervals.get(k) for k in keys]
            error = {"type": "data", "symmetric": False, "color": "#333", "thickness": 1,
                     "array": [c[1] - v if c else None for c, v in zip(ci, y)],
                     "arrayminus": [v - c[0] if c else None for c, v in zip(ci, y)]} if any(ci) else None
            fig.add_trace(go.Bar(
                x=modalities, y=[None if math.isnan(v) else v for v in y], name=mode, legendgroup=mode,
                showlegend=col == 1 or "harmful" not in by_label, offsetgroup=mode, error_y=error,
                text=["n/a" if math.isnan(v) else f"{v:.0%}" + (f"<br>n={counts[k]}" if k in counts else "")
                      for v, k in zip(y, keys)], textposition="outside",
                marker={"color": [_color(m) for m in modalities], "line": {"color": "#333", "width": 1},
                        "pattern": {"shape": _MODE_PATTERNS.get(mode, "+"), "fgcolor": "#333"}},
                hovertemplate=f"%{{x}} · {html.escape(mode)} · {lab}: %{{y:.1%}}<extra></extra>"),
                row=1, col=col)
    fig.update_yaxes(range=[0, 1.15], tickformat=".0%")
    fig.update_yaxes(title_text="share of requests refused", row=1, col=1)
    fig.update_xaxes(title_text="input modality")
    fig.update_layout(template=_TEMPLATE, barmode="group", legend_title_text="correction mode",
                      title="How often the model refuses, per modality and correction mode")
    return fig if fig.data else _no_data(fig, 1, 1)


def figures_html(figures: Mapping[str, go.Figure], captions: Mapping[str, str] | None = None,
                 include_plotlyjs: bool = True) -> str:
    """HTML sections (heading, figure div, caption) for each figure; plotly.js inlined once at most."""
    parts: list[str] = []
    for i, (name, fig) in enumerate(figures.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs and i == 0,
                          div_id=f"fig-{i}", default_width="100%")
        caption = (captions or {}).get(name)
        parts.append(f'<section>\n<h2>{html.escape(name)}</h2>\n{div}\n'
                     + (f'<p class="caption">{html.escape(caption)}</p>\n' if caption else "") + "</section>")
    return "\n".join(parts)


def table_html(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """One HTML table (every cell escaped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_report(path: str | os.PathLike[str], title: str, figures: Mapping[str, go.Figure],
                 summary: Mapping[str, str] | None = None,
                 captions: Mapping[str, str] | None = None,
                 tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[str]]]] | None = None) -> Path:
    """Write one self-contained HTML report (plotly.js inlined once), atomically; return its path.

    The header holds the title and a summary table (key → value); `tables` (title → (headers, rows)) follow it,
    each with its caption from `captions`, then each figure with its caption. All user text is HTML-escaped.
    """
    out = Path(path)
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in (summary or {}).items())
    body = "".join(f"<section><h2>{html.escape(name)}</h2>{table_html(*table)}"
                   + (f'<p class="caption">{html.escape((captions or {})[name])}</p>' if name in (captions or {}) else "")
                   + "</section>\n" for name, table in (tables or {}).items())
    body += figures_html(figures, captions) if figures else f"<p>{NO_DATA}</p>"
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f"<title>{html.escape(title)}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;"
           "margin:auto;padding:1em}} table{{border-collapse:collapse}} th,td{{border:1px solid #ddd;"
           "padding:4px 8px;text-align:left}} .caption{{color:#444}}</style>\n</head>\n<body>\n"
           f"<header><h1>{html.escape(title)}</h1>\n"
           + (f'<table class="summary">{rows}</table>\n' if rows else "")
           + f"</header>\n{body}\n</body>\n</html>\n")
    write_atomic(out, doc)
    return out
