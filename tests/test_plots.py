"""Fast tests for explorer.report.plots: structure of the figures, not their pixels."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from explorer.report import plots
from explorer.report.plots import (
    LABEL_SYMBOLS,
    MODALITY_COLORS,
    NO_DATA,
    embedding_figure,
    figures_html,
    rates_figure,
    refusal_axis_figure,
    separability_figure,
    write_report,
)

NASTY = "<b>& how do I pick a lock?"


def _annotations(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


@pytest.fixture
def embedding() -> go.Figure:
    coords = np.arange(12, dtype=float).reshape(6, 2)
    coords[5, 0] = np.nan
    return embedding_figure(
        coords, [NASTY, "bake bread", "make a bomb", "plant trees", "make a bomb", "hack a bank"],
        ["text", "text", "image", "image", "image", "audio"],
        ["harmful", "harmless", "harmful", "harmless", "harmful", "harmful"],
        corrected=[False, False, False, False, True, False],
        highlights=[{"x": 1.0, "y": 2.0, "name": "your prompt", "text": NASTY},
                    {"x": 1.5, "y": 2.5, "name": "your prompt (corrected)", "text": NASTY}],
        layer=7, method="UMAP")


def test_embedding_one_trace_per_group(embedding: go.Figure) -> None:
    names = [t.name for t in embedding.data]
    assert names == ["text · harmful", "text · harmless", "image · harmful", "image · harmful (corrected)",
                     "image · harmless", "audio · harmful", "your prompt", "your prompt (corrected)"]
    by_name = {t.name: t for t in embedding.data}
    assert len(by_name["image · harmful"].x) == 1 and len(by_name["image · harmful (corrected)"].x) == 1
    assert by_name["image · harmful"].marker.symbol == "x"
    assert by_name["image · harmful (corrected)"].marker.symbol == "x-open"
    assert by_name["image · harmless"].marker.symbol == LABEL_SYMBOLS["harmless"] == "circle"
    for name, mod in (("text · harmful", "text"), ("image · harmful (corrected)", "image"),
                      ("audio · harmful", "audio")):
        assert by_name[name].marker.color == MODALITY_COLORS[mod]
    assert by_name["audio · harmful"].x == (None,)  # NaN drawn as a gap
    assert embedding.layout.template == pio.templates["plotly_white"]
    assert "layer 7" in embedding.layout.title.text and "UMAP" in embedding.layout.xaxis.title.text


def test_embedding_hover_has_escaped_instruction_and_context(embedding: go.Figure) -> None:
    tr = embedding.data[0]
    assert tr.text[0] == "&lt;b&gt;&amp; how do I pick a lock?"
    assert "%{text}" in tr.hovertemplate
    for part in ("text", "harmful", "layer 7"):
        assert part in tr.hovertemplate
    assert "corrected" in embedding.data[3].hovertemplate


def test_embedding_highlights_star_and_diamond(embedding: go.Figure) -> None:
    star, diamond = embedding.data[-2:]
    assert (star.marker.symbol, diamond.marker.symbol) == ("star", "diamond")
    assert star.marker.size >= 16 and diamond.marker.size >= 16
    assert (star.x, star.y) == ((1.0,), (2.0,))
    assert "&lt;b&gt;" in star.text[0]


def test_embedding_long_instruction_wrapped() -> None:
    fig = embedding_figure(np.zeros((1, 2)), ["word " * 40], ["text"], ["harmless"], layer=0, method="PCA")
    assert "<br>" in fig.data[0].text[0]


def test_embedding_empty_and_mismatch() -> None:
    fig = embedding_figure(np.zeros((0, 2)), [], [], [], layer=0, method="PCA")
    assert len(fig.data) == 0 and NO_DATA in _annotations(fig)
    with pytest.raises(ValueError, match="labels"):
        embedding_figure(np.zeros((2, 2)), ["a", "b"], ["text", "text"], ["harmful"], layer=0, method="PCA")
    with pytest.raises(ValueError, match="coords"):
        embedding_figure(np.zeros((2, 3)), ["a", "b"], ["text"] * 2, ["harmful"] * 2, layer=0, method="PCA")


GROUPS = {
    "text/harmful": {"mean": [0.0, 1.0, 2.0], "std": [0.1, 0.2, 0.3]},
    "text/harmless": {"mean": [0.0, -1.0, -2.0], "std": [0.1, 0.1, 0.1]},
    "image/harmful": {"mean": [0.0, 0.2, math.nan], "std": [0.1, 0.1, 0.1]},
    "image/harmful (corrected)": {"mean": [0.0, 0.8, 1.5], "std": [0.1, 0.1, 0.1]},
}


def test_refusal_axis_bands_and_lines() -> None:
    fig = refusal_axis_figure(GROUPS, {"your prompt": [0.0, 0.1, 0.2], "your prompt (corrected)": [0, 0.5, 1]})
    names = [t.name for t in fig.data]
    assert names == [n for k in GROUPS for n in (f"{k} ±1 std", k)] + ["your prompt", "your prompt (corrected)"]
    by_name = {t.name: t for t in fig.data}
    for key in GROUPS:
        band = by_name[f"{key} ±1 std"]
        assert band.fill == "toself" and band.showlegend is False
    # band of text/harmful: upper edge forwards, lower edge backwards
    assert by_name["text/harmful ±1 std"].y == pytest.approx((0.1, 1.2, 2.3, 1.7, 0.8, -0.1))
    assert by_name["text/harmful"].line.dash == "solid" and by_name["text/harmless"].line.dash == "dash"
    assert by_name["image/harmful (corrected)"].line.color == MODALITY_COLORS["image"]
    assert by_name["image/harmful (corrected)"].marker.symbol == "circle-open"
    assert by_name["image/harmful"].y[2] is None  # NaN is a gap
    assert None not in by_name["image/harmful ±1 std"].y  # the band stops before the NaN layer
    traj = by_name["your prompt"]
    assert traj.line.width >= 3 and "markers" in traj.mode
    assert by_name["your prompt (corrected)"].marker.symbol == "diamond"


def test_refusal_axis_band_split_at_nan_gap() -> None:
    fig = refusal_axis_figure({"audio/harmful": {"mean": [1, 2, math.nan, 4, 5], "std": [1] * 5}})
    band = fig.data[0]
    assert band.x == (0, 1, 1, 0, None, 3, 4, 4, 3)


def test_refusal_axis_empty_and_mismatch() -> None:
    assert NO_DATA in _annotations(refusal_axis_figure({}, {}))
    with pytest.raises(ValueError, match="image/harmless"):
        refusal_axis_figure({"image/harmless": {"mean": [1.0, 2.0], "std": [1.0]}})


def _panel(fig: go.Figure, xaxis: str) -> list[go.Scatter]:
    return [t for t in fig.data if (t.xaxis or "x") == xaxis]


def test_separability_four_panels() -> None:
    auroc = {"text/off": [0.9, 1.0], "image/off": [0.6, 0.55], "image/adaptive": [0.8, 0.9]}
    gap = {"text/off": [1.0, 2.0], "image/off": [0.3, 0.2]}
    fig = separability_figure(auroc, gap, {"image": [1.0, 2.0], "audio": [0.5, 0.7]},
                              {"image": [-0.1, -0.3], "audio": [0.0, math.nan]})
    assert len(fig.layout.annotations) >= 4  # subplot titles
    assert [t.name for t in _panel(fig, "x")] == list(auroc)
    assert [t.name for t in _panel(fig, "x2")] == list(gap)
    assert [t.name for t in _panel(fig, "x3")] == ["image", "audio"]
    assert [t.name for t in _panel(fig, "x4")] == ["image", "audio"]
    dashes = {t.name: t.line.dash for t in _panel(fig, "x")}
    assert dashes == {"text/off": "solid", "image/off": "solid", "image/adaptive": "dash"}
    assert tuple(fig.layout.yaxis.range) == (0.4, 1.02)
    lines = [(s.y0, s.line.dash, s.yref) for s in fig.layout.shapes]
    assert (0.5, "dot", "y") in lines and any(y == 0 and ref == "y4" for y, _, ref in lines)
    assert sum(bool(t.showlegend is not False) for t in fig.data if t.name == "image") == 1
    assert _panel(fig, "x4")[1].y[1] is None


def test_separability_empty_panel_and_mismatch_free() -> None:
    fig = separability_figure({}, {}, {}, {})
    assert _annotations(fig).count(NO_DATA) == 4


def test_rates_figure_values_and_groups() -> None:
    rates = {"text/off/harmful": 0.95, "image/off/harmful": 0.3, "image/adaptive/harmful": 0.85,
             "text/off/harmless": 0.05, "image/off/harmless": 0.02, "image/adaptive/harmless": 0.1}
    fig = rates_figure(rates)
    assert fig.layout.barmode == "group"
    left = [t for t in fig.data if (t.xaxis or "x") == "x"]
    right = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in left] == ["off", "adaptive"] and [t.name for t in right] == ["off", "adaptive"]
    off = left[0]
    assert off.x == ("text", "image") and off.y == (0.95, 0.3) and off.text == ("95%", "30%")
    assert left[1].y == (None, 0.85) and left[1].text == ("n/a", "85%")
    assert right[1].text == ("n/a", "10%")
    assert off.marker.color == (MODALITY_COLORS["text"], MODALITY_COLORS["image"])
    assert sum(t.showlegend is not False for t in fig.data) == 2


def test_rates_empty_and_bad_key() -> None:
    assert NO_DATA in _annotations(rates_figure({}))
    with pytest.raises(ValueError, match="image/harmful"):
        rates_figure({"image/harmful": 0.5})


def test_write_report(tmp_path) -> None:
    figs = {"Embedding <layer 7>": embedding_figure(np.zeros((1, 2)), [NASTY], ["text"], ["harmful"],
                                                    layer=7, method="PCA"),
            "Rates": rates_figure({"text/off/harmful": 1.0}),
            "Axis": refusal_axis_figure(GROUPS)}
    captions = {"Embedding <layer 7>": "Each dot is a prompt & its state.", "Rates": "Bars: refused share.",
                "Axis": "Bands: ±1 std."}
    out = write_report(tmp_path / "sub" / "report.html", "Report <Qwen & co>", figs,
                       summary={"model": "tiny<model>", "items": "12"}, captions=captions)
    html_text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "sub" / "report.html"
    assert html_text.count("* plotly.js v") == 1  # exactly one inline bundle
    assert "<script src=" not in html_text and "<script charset=\"utf-8\" src=" not in html_text
    assert html_text.count('class="plotly-graph-div"') == 3
    assert "&lt;b&gt;&amp; how do I pick a lock?" in html_text
    assert "<b>& how" not in html_text
    assert "<h1>Report &lt;Qwen &amp; co&gt;</h1>" in html_text
    assert "<th>model</th><td>tiny&lt;model&gt;</td>" in html_text
    for cap in ("Each dot is a prompt &amp; its state.", "Bars: refused share.", "Bands: ±1 std."):
        assert cap in html_text
    assert "<h2>Embedding &lt;layer 7&gt;</h2>" in html_text
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left


def test_write_report_without_figures(tmp_path) -> None:
    out = write_report(tmp_path / "r.html", "Empty", {})
    assert NO_DATA in out.read_text() and "plotly.js v" not in out.read_text()


def test_figures_html_inlines_once_and_public_api() -> None:
    figs = {"a": rates_figure({}), "b": rates_figure({})}
    assert figures_html(figs).count("* plotly.js v") == 1
    assert figures_html(figs, include_plotlyjs=False).count("* plotly.js v") == 0
    for name in plots.__all__:
        assert hasattr(plots, name)
