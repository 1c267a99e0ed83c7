"""The web app's handlers (explorer/app/ui.py), called directly on tiny random-weight models: no Gradio server."""

from __future__ import annotations

import csv
import html
import json
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.app import story, ui, ui_export
from explorer.app.analysis import FIGURE_TITLES
from explorer.app.ui_inputs import analysis_of
from explorer.app.ui_session import AppSettings, AppState
from explorer.evaluation.verdicts import verdict_of
from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER, render_image
from explorer.inputs.speech_engine import speech_unavailable_reason

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a request logs a warning


@pytest.fixture(scope="module")
def state(tiny_model_dir, tmp_path_factory) -> AppState:
    settings = AppSettings(model=str(tiny_model_dir("llava")), device="cpu", calibration_limit=8, model_switch="any",
                           cache_dir=tmp_path_factory.mktemp("sge-cache"), media_roots=(tmp_path_factory.getbasetemp(),))
    return AppState.start(settings, warm_up=False)


@pytest.fixture(scope="module")
def image_request(state) -> tuple[str, Image.Image]:
    image, carrier, status = ui.render_image_input(state, ui.EXAMPLE_HARMFUL)
    assert carrier == IMAGE_CARRIER and "⚠️" not in status
    return carrier, image


def _results(state, text, image, config_mode, strength, tokens=12):
    """The GenerationResult a handler would stream to its end."""
    session = state.session
    prompt, _ = ui.make_prompt(session, state.settings, text, image)
    config = ui.CorrectionConfig(mode="off") if config_mode == "off" else session.config(config_mode, strength)
    return ui.complete_generation(session, prompt, config, tokens)


def test_model_info_names_model_layers_and_calibration_size(state):
    info = state.session.describe()
    assert "layers:** 3" in info and "16 requests (8 harmful, 8 harmless) × 2 modalities = 32 states" in info
    assert "demo model" not in info  # the toy disclaimer is for the demo model only


def test_analyse_returns_three_figures_with_calibration_groups_and_highlight(state, image_request):
    carrier, image = image_request
    out = ui.analyse(state, carrier, image, None, 2, "adaptive", 1.0, "", "UMAP")
    fig_map, fig_axis, fig_sep, cap_map, cap_axis, cap_sep, status = (out[name] for name in (
        "fig_map", "fig_axis", "fig_sep", "cap_map", "cap_axis", "cap_sep", "status"))
    names = [trace.name for trace in fig_map.data]
    assert names == ["text · harmful", "text · harmless", "image · harmful", "image · harmful (corrected)",
                     "image · harmless", "image · harmless (corrected)", "your prompt", "your prompt (corrected)"]
    star, diamond = fig_map.data[-2], fig_map.data[-1]
    assert star.marker.symbol == "star" and diamond.marker.symbol == "diamond" and len(star.x) == 1
    assert sum(len(t.x) for t in fig_map.data[:-2]) == 32 + 16  # calibration + corrected image points
    assert "PCA" in fig_map.layout.title.text and "UMAP is still compiling" in status  # not warm: PCA, said so
    axis = {trace.name for trace in fig_axis.data}
    assert {"text/harmful", "image/harmless", "image/harmful (corrected)", "your prompt", "your prompt (corrected)"} <= axis
    assert len(next(t for t in fig_axis.data if t.name == "your prompt").y) == 3
    assert {"text/off", "image/off", "image/adaptive"} == {trace.name for trace in fig_sep.data}
    assert "layer 2" in cap_map and "probe layer 2" in cap_axis and "AUROC" in cap_sep


def test_analyse_off_and_text_prompt_have_no_corrected_points(state):
    out = ui.analyse(state, ui.EXAMPLE_LOOKALIKE, None, None, 1, "off", 1.0, "", "PCA")
    assert not any("corrected" in trace.name for trace in list(out["fig_map"].data) + list(out["fig_axis"].data))
    status = ui.analyse(state, ui.EXAMPLE_LOOKALIKE, None, None, 1, "fixed", 1.0, "", "PCA")["status"]
    assert "never corrected" in status


def test_corrected_calibration_is_captured_once_per_correction(state):
    session = state.session
    config = session.config("fixed", 1.5)
    assert session.corrected_calibration(config) is session.corrected_calibration(config)
    assert session.corrected_calibration(session.config("off", 1.0)) is None


def test_analysis_alpha_equals_the_alpha_generation_uses(state, image_request):
    carrier, image = image_request
    session = state.session
    prompt, _ = ui.make_prompt(session, state.settings, carrier, image)
    analysis = ui.compute_analysis(state, session, prompt, session.config("adaptive", 2.0), 2, "PCA")
    result = _results(state, carrier, image, "adaptive", 2.0, tokens=2)
    assert analysis.metrics["prompt"]["s_x"] == pytest.approx(result.score, abs=1e-5)
    assert analysis.metrics["prompt"]["alpha_x"] == pytest.approx(result.alpha, abs=1e-5)


def test_generate_both_sides_stream_and_badge(state, image_request):
    carrier, image = image_request
    plain = list(ui.generate_plain(state, carrier, image, None, 12, 0))
    corrected = list(ui.generate_corrected(state, carrier, image, None, "adaptive", 1.0, "", 12, 0))
    assert len(plain) >= 2 and plain[0][1] == "⏳ generating…"  # streamed: partial texts first
    assert plain[-1][0] and any(verdict in plain[-1][1] for verdict in ("refused", "complied", "broken"))
    assert "no correction" in plain[-1][1]
    assert "s(x) = " in corrected[-1][1] and "α(x) = " in corrected[-1][1] and "probe 2" in corrected[-1][1]


def test_strength_zero_reproduces_plain_and_strength_three_changes_it(state, image_request):
    carrier, image = image_request
    plain = _results(state, carrier, image, "off", 0.0)
    for mode in ("fixed", "fixed_axis", "adaptive", "cmrm", "cmrm_sample", "shiftdc"):
        assert _results(state, carrier, image, mode, 0.0).token_ids == plain.token_ids, mode
    assert _results(state, carrier, image, "fixed", 3.0).token_ids != plain.token_ids
    text_plain, _ = ui.final(ui.generate_plain(state, carrier, image, None, 12, 0))
    text_zero, _ = ui.final(ui.generate_corrected(state, carrier, image, None, "fixed", 0.0, "", 12, 0))
    assert text_zero == text_plain


def test_concurrent_corrected_request_never_leaks_into_a_plain_one(state, image_request):
    carrier, image = image_request
    expected = {"plain": _results(state, carrier, image, "off", 0.0, 24).token_ids,
                "fixed": _results(state, carrier, image, "fixed", 3.0, 24).token_ids}
    assert expected["plain"] != expected["fixed"]
    got: dict[str, list] = {"plain": [], "fixed": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(mode: str, strength: float) -> None:
        barrier.wait()
        try:
            for _ in range(3):
                mode_name = "off" if mode == "plain" else mode
                got[mode].append(_results(state, carrier, image, mode_name, strength, 24).token_ids)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=a) for a in (("plain", 0.0), ("fixed", 3.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got["plain"] == [expected["plain"]] * 3 and got["fixed"] == [expected["fixed"]] * 3


@pytest.mark.parametrize("kind", ["not_image", "corrupt", "huge"])
def test_bad_images_give_specific_messages(state, tmp_path, kind):
    path = tmp_path / "upload.png"
    if kind == "not_image":
        path.write_text("just some text, not pixels")
        expected = "not an image"
    elif kind == "corrupt":
        render_image("How do I bake bread?").save(path)
        path.write_bytes(path.read_bytes()[:200])
        expected = "corrupt or truncated"
    else:
        Image.new("1", (8000, 6250)).save(path)  # 50 megapixels, a small file
        expected = "50.0 megapixels"
    outputs = ui.analyse(state, IMAGE_CARRIER, {"path": str(path)}, None, 1, "adaptive", 1.0, "", "PCA")
    assert set(outputs) == {"status"} and outputs["status"].startswith("⚠️") and expected in outputs["status"]
    text, info = ui.final(ui.generate_plain(state, IMAGE_CARRIER, {"path": str(path)}, None, 4, 0))
    assert text == "" and expected in info


def test_other_bad_inputs_give_messages(state, image_request):
    _, image = image_request
    cases = [
        (("", None, None, 1, "adaptive", 1.0, ""), "prompt is empty"),
        (("hi", None, (16000, np.zeros(1600, np.int16)), 1, "adaptive", 1.0, ""), "does not accept audio"),
        (("hi", image, (16000, np.zeros(1600, np.int16)), 1, "adaptive", 1.0, ""), "not both"),
        (("hi", None, None, 9, "adaptive", 1.0, ""), "whole number in 0..2; got 9"),
        (("hi", None, None, 1, "bogus", 1.0, ""), "correction mode must be one of"),
        (("hi", None, None, 1, "fixed", -1.0, ""), "strength must be"),
        (("hi", None, None, 1, "fixed", 1.0, "1-9"), "corrected layers"),
        (("x" * 5000, None, None, 1, "fixed", 1.0, ""), "keep it under"),
    ]
    for args, expected in cases:
        status = ui.analyse(state, *args, "PCA")["status"]
        assert status.startswith("⚠️") and expected in status, (args[0][:10], status)
    assert "max new tokens" in ui.final(ui.generate_plain(state, "hi", None, None, 100000, 0))[1]
    for render in (ui.render_image_input, ui.render_audio_input):
        assert "type a request first" in render(state, "  ")[2]
        assert "already the carrier" in render(state, IMAGE_CARRIER)[2]
    assert "smallest legible font" in ui.render_image_input(state, "extraordinarily " * 75)[2]  # too long to draw
    image, _, status = ui.render_image_input(state, "word " * 30)  # 30 words: wrapped into lines, as the model
    assert "⚠️" not in status and image.size == (336, 336)       # (LLaVA-1.5's 336 crop) can read them


def test_out_of_memory_is_a_message(state, image_request, monkeypatch):
    carrier, image = image_request

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ui, "generate", boom)
    text, info = ui.final(ui.generate_plain(state, carrier, image, None, 4, 0))
    assert text == "" and "Out of memory" in info and "still running" in info
    monkeypatch.setattr(type(state.session), "capture", boom)
    assert "Out of memory" in ui.analyse(state, carrier, image, None, 1, "off", 1.0, "", "PCA")["status"]


def test_model_that_cannot_load_keeps_the_previous_one(state, tmp_path):
    before = state.session
    (tmp_path / "not_a_model").mkdir()
    for model_id in (str(tmp_path / "not_a_model"), "", "/no/such/model"):
        out = ui.load_model_ui(state, model_id)
        assert not out["ok"] and out["status"].startswith("⚠️ Could not load") and "Still serving" in out["status"]
        assert state.session is before and out["num_layers"] == 3


def test_load_model_switches_and_reports_progress(state):
    before = state.session
    seen: list[str] = []
    out = ui.load_model_ui(state, before.model.name, progress=lambda fraction, message: seen.append(message))
    try:
        assert out["ok"] and state.session is not before and out["layers_text"] == before.layers_text()
        assert seen[0].startswith("loading") and seen[-1] == "model and calibration ready"
    finally:
        state.session = before  # keep the module's session (and its caches) for the other tests


def test_render_inputs(state):
    image, carrier, _ = ui.render_image_input(state, ui.EXAMPLE_HARMFUL)
    assert carrier == IMAGE_CARRIER and image.size == state.session.model.media.image_layout.size
    if speech_unavailable_reason() is not None:
        pytest.skip(f"no speech engine: {speech_unavailable_reason()}")
    (rate, pcm), carrier, _ = ui.render_audio_input(state, ui.EXAMPLE_HARMFUL)
    assert rate == 16000 and pcm.dtype == np.int16 and pcm.size > 16000 and carrier == AUDIO_CARRIER


def test_export_writes_metrics_directions_figures_and_report(state, image_request):
    carrier, image = image_request
    files, sid, status = ui_export.export(state, "", carrier, image, None, 2, "adaptive", 1.0, "", "PCA",
                                   "plain answer", "💬 complied", "corrected answer", "🛑 refused")
    assert status == "Exported 5 files." and len(sid) == 32
    paths = {p.rsplit("/", 1)[1]: p for p in files}
    assert set(paths) == {"metrics.json", "metrics.csv", "directions.zip", "figures.html", "report.html"}
    assert all(p.startswith(str(state.export_root / sid)) for p in files)
    metrics = json.loads(open(paths["metrics.json"]).read())
    assert metrics["regap"]["per_item"][0]["mode"] == "adaptive" and len(metrics["per_layer"]["auroc"]["image/adaptive"]) == 3
    assert metrics["generations"]["corrected"]["text"] == "corrected answer"
    rows = list(csv.DictReader(open(paths["metrics.csv"])))
    per_layer_series = {name for name, value in metrics["per_layer"].items()
                        if isinstance(value, dict) and value and name not in ("auroc_ci", "n")}
    assert {"auroc", "refusal_gap", "accuracy_at_text_threshold", "drift_norm", "cos_drift_refusal",
            "drift_norm_corrected", "cos_drift_refusal_corrected"} <= per_layer_series
    assert per_layer_series | {"prompt_score"} == {r["metric"] for r in rows}
    # every AUROC row has its 95% bootstrap interval around it and its item count; other rows leave them empty
    for row in rows:
        if row["metric"] == "auroc":
            assert 0.0 <= float(row["ci_low"]) <= float(row["ci_high"]) <= 1.0
            assert int(row["n"]) == len(state.session.calibration.items)  # one state per calibration request
        else:
            assert row["ci_low"] == row["ci_high"] == row["n"] == ""
    assert set(zipfile.ZipFile(paths["directions.zip"]).namelist()) == {"profile.json", "profile.safetensors"}
    report = open(paths["report.html"]).read()
    assert "corrected answer" in report and "plotly" in report and "Refusal axis per layer" in report
    # each figure's section holds its own caption (they pair by name, never by position)
    sections = re.findall(r"<section>\n<h2>(.*?)</h2>.*?(?:<p class=\"caption\">(.*?)</p>)?\n</section>", report, re.S)
    assert [title for title, _ in sections] == list(FIGURE_TITLES.values())
    result = analysis_of(state, carrier, image, None, 2, "adaptive", 1.0, "", "PCA")[0]
    assert [caption for _, caption in sections] == [html.escape(result.captions[n]) for n in FIGURE_TITLES]
    again, sid2, _ = ui_export.export(state, sid, carrier, image, None, 2, "off", 1.0, "", "PCA")
    assert sid2 == sid and again == files  # the same session folder
    _, sid3, _ = ui_export.export(state, "../../etc", carrier, image, None, 2, "off", 1.0, "", "PCA")
    assert sid3 != "../../etc" and len(sid3) == 32  # never a path from the client


#: metrics.json keys only `eval` can fill (they count generated answers or the run's items) and keys only the
#: app's one-prompt analysis has; every other key is shared and holds the same kind of value.
EVAL_ONLY = {"num_items", "elapsed_seconds", "verdicts", "refusal_rate", "complied_rate", "broken_rate", "refusal_rate_ci",
             "complied_rate_ci", "broken_rate_ci", "n", "paired", "calibration_overlap", "lookalike_refusal_rate",
             "lookalike_refusal_rate_ci", "lookalike_n", "utility_overlap", "utility_n", "skipped", "skipped_items",
             "max_new_tokens", "judge"}
APP_ONLY = {"calibration_states", "prompt", "layer_shown", "embedding", "generations"}
PER_LAYER_EVAL_ONLY = {"translation_ceiling", "translation_ceiling_budget"}  # need the text answers' refusal rate
PER_LAYER_APP_ONLY = {"drift_norm_corrected", "cos_drift_refusal_corrected"}  # the drift left, drawn by the app


def test_export_writes_the_metrics_json_schema_of_eval(state, image_request, tiny_eval_run):
    """One metrics path (issue 23): the app's Export and `eval` write the same keys, per layer too, computed by the
    same functions (explorer.geometry.layer_metrics)."""
    carrier, image = image_request
    files, _, _ = ui_export.export(state, "", carrier, image, None, 2, "adaptive", 1.0, "", "PCA")
    exported = json.loads(open(next(f for f in files if f.endswith("metrics.json"))).read())
    evaluated = json.loads((tiny_eval_run[0] / "metrics.json").read_text())
    assert set(exported) - APP_ONLY == set(evaluated) - EVAL_ONLY
    assert set(exported["per_layer"]) - PER_LAYER_APP_ONLY == set(evaluated["per_layer"]) - PER_LAYER_EVAL_ONLY
    assert set(exported["regap"]) == set(evaluated["regap"]) - {"strength_choice", "strength_choices"}
    assert set(exported["regap"]["per_item"][0]) == set(evaluated["regap"]["per_item"][0])
    for name in ("auroc", "refusal_gap", "accuracy_at_text_threshold", "auroc_ci"):
        assert set(exported["per_layer"][name]) == {"text/off", "image/off", "image/adaptive"}
        assert set(evaluated["per_layer"][name]) == {f"{m}/{mode}" for m in ("text", "image")
                                                     for mode in ("off", "fixed", "adaptive")}
    # the same function on the same states gives the same numbers: the app's uncorrected text AUROC per layer is
    # the profile's own (formula 3 on the calibration states)
    assert exported["per_layer"]["auroc"]["text/off"] == pytest.approx(
        state.session.profile.metrics["auroc"]["text"], abs=1e-6)


def test_show_collapse_tells_the_three_step_story(state):
    out = story.show_collapse(state, 8, "PCA")
    assert out["prompt"] == IMAGE_CARRIER and isinstance(out["image"], Image.Image) and out["audio"] is None
    told = out["story"]
    assert "1. **As text**" in told and "2. **The same words as a typographic image**" in told
    assert "3. **A typographic image with ReGap**" in told and ui.COLLAPSE_REQUEST in told
    said = re.findall(r"→ \*\*(refused|complied|broken)\*\*", told)
    assert len(said) == 3  # text, the same words as an image, the image with ReGap
    judge = state.session.judge
    # the same verdicts evaluation records: broken first, then the judge reading (request, answer)
    assert said[1:] == [verdict_of(judge.is_refusal(out[k], ui.COLLAPSE_REQUEST), out[k])
                        for k in ("plain_text", "corrected_text")]
    assert all(f">{v}" in out[k] for v, k in zip(said[1:], ("plain_info", "corrected_info")))  # the badges agree
    whole_story = said == ["refused", "complied", "refused"]
    assert ("The collapse, and the fix" in told) == whole_story
    assert ("does not show the full story" in told) == (not whole_story)
    assert out["mode"] == "adaptive" and out["fig_map"] is not None
    assert out["layers_text"] == state.session.layers_text() == str(state.session.defaults.layers[0])  # calibrated
    assert ("refused" in out["corrected_info"]) == state.session.judge.is_refusal(out["corrected_text"])
    assert out["strength"] == 1.0 and "α_max = 1," in told  # no strength chosen for this model: α_max 1


def test_show_collapse_starts_from_the_strength_chosen_on_calibration(state, monkeypatch):
    def alpha(out):
        return float(re.search(r"α\(x\) = ([0-9.]+)", out["corrected_info"]).group(1))

    base = story.show_collapse(state, 4, "PCA")
    monkeypatch.setattr(state.session.model, "suggested_strengths", {"adaptive": {"image": 2.5}})
    out = story.show_collapse(state, 4, "PCA")
    assert out["strength"] == 2.5 and "α_max = 2.5," in out["story"]
    assert alpha(out) == pytest.approx(2.5 * alpha(base), abs=0.02)  # α(x) = α_max · w(s(x)): the same score


def test_audio_model_trims_long_audio_and_says_so(tiny_model_dir, tmp_path_factory):
    settings = AppSettings(model=str(tiny_model_dir("qwen2_audio")), device="cpu", calibration_limit=4,
                           cache_dir=tmp_path_factory.mktemp("sge-cache-audio"),
                           media_roots=(tmp_path_factory.getbasetemp(),))
    if speech_unavailable_reason() is not None:
        pytest.skip(f"no speech engine (audio calibration needs one): {speech_unavailable_reason()}")
    state = AppState.start(settings, warm_up=False)
    ten_minutes = (16000, (np.sin(np.arange(16000 * 600) / 5) * 3000).astype(np.int16))
    status = ui.analyse(state, AUDIO_CARRIER, None, ten_minutes, 1, "adaptive", 1.0, "", "PCA")["status"]
    assert "Audio trimmed from 600.0 s to 30.0 s" in status
    text, info = ui.final(ui.generate_corrected(state, AUDIO_CARRIER, None, ten_minutes, "adaptive", 1.0, "", 4, 0))
    assert "Audio trimmed" in info and "α(x)" in info
    bad = tmp_path_factory.mktemp("bad") / "clip.wav"
    bad.write_text("not audio")
    assert "could not be decoded as audio" in ui.analyse(state, "", None, {"path": str(bad)}, 1, "off", 1.0, "",
                                                          "PCA")["status"]
    assert "does not accept image" in ui.analyse(state, "hi", render_image("a b"), None, 1, "off", 1.0, "", "PCA")["status"]
    out = story.show_collapse(state, 4, "PCA")
    assert out["prompt"] == AUDIO_CARRIER and out["audio"][0] == 16000 and out["image"] is None


def test_model_switching_follows_the_operators_policy(state, monkeypatch):
    """Exposed servers: switching off unless allowed, or limited to a list; no message reveals a path's existence."""
    from dataclasses import replace

    from explorer.app import ui_session

    loads: list[str] = []
    monkeypatch.setattr(ui_session, "load_model", lambda model_id, **_k: loads.append(model_id) or 1 / 0)
    original = state.settings
    try:
        state.settings = replace(original, model_switch="off")
        answers = set()
        for model_id in ("/etc/passwd", "/no/such/path", "no/such-model"):
            out = ui.load_model_ui(state, model_id)
            assert "switching models from the page is turned off" in out["status"] and not out["ok"]
            answers.add(out["status"].replace(model_id, "ID"))
        assert len(answers) == 1  # the same answer whether or not a path exists
        state.settings = replace(original, model_switch="listed", allowed_models=("demo",))
        out = ui.load_model_ui(state, "/etc")
        assert "this server serves only these models: demo. Still serving" in out["status"]
        assert loads == []  # nothing was even looked up
    finally:
        state.settings = original


def test_app_allows_model_switching_from_the_page_only_on_loopback_unless_told():
    from app import _parse_args, settings_from_args

    def switch(*argv: str) -> tuple[str, tuple[str, ...]]:
        settings = settings_from_args(_parse_args(list(argv)))
        return settings.model_switch, settings.allowed_models

    assert switch() == ("local", ())
    assert switch("--host", "localhost") == ("local", ()) and switch("--host", "LOCALHOST") == ("local", ())
    for exposed in ("0.0.0.0", "::", "::1", "[::1]", "127.0.0.2", "my-host.example"):
        assert switch("--host", exposed) == ("off", ()), exposed  # not covered by Gradio's cross-site guard
    assert switch("--host", "0.0.0.0") == ("off", ())
    assert switch("--share") == ("off", ())
    assert switch("--host", "0.0.0.0", "--allow-model-switch") == ("any", ())
    assert switch("--host", "0.0.0.0", "--allowed-models", "demo, llava-hf/llava-1.5-7b-hf") == \
        ("listed", ("demo", "llava-hf/llava-1.5-7b-hf"))


def test_page_starts_from_the_calibrated_strength_and_says_where_it_came_from(state, monkeypatch):
    assert state.session.starting_strength() == (1.0, "starts at 1: no strength chosen on calibration is recorded "
                                                       "for adaptive on these weights")
    monkeypatch.setattr(state.session.model, "suggested_strengths", {"adaptive": {"image": 2.5},
                                                                     "fixed": {"image": 0.5},
                                                                     "adaptive_raw": {"image": 1.5}})
    value, origin = state.session.starting_strength()
    assert value == 2.5 and "starts at 2.5" in origin and "(image 2.5)" in origin
    # each mode starts from its own α (a baseline never at ReGap's), the ablation too: one rule with the CLI
    assert ui.strength_for_mode(state, "fixed")[0] == 0.5 and ui.strength_for_mode(state, "adaptive_raw")[0] == 1.5
    assert ui.strength_for_mode(state, "shiftdc")[0] == 1.0 and "no strength chosen" in ui.strength_for_mode(
        state, "shiftdc")[1]
    # a peer mode starts at its own layers (empty box), ReGap's modes at the calibrated one
    L = state.session.num_layers
    assert ui.layers_for_mode(state, "shiftdc") == ("", f"empty = shiftdc's own layers {L // 2}-{L - 1} (as its "
                                                        "authors apply it); type a layer or a window to override")
    assert ui.layers_for_mode(state, "fixed")[0] == state.session.layers_text()
    info = state.session.layers_info()
    assert f"probe layer {state.session.defaults.probe_layer}" in info and "Layer shown" in info


def test_not_a_number_strength_is_refused(state):
    for strength in (float("nan"), float("inf"), "strong"):
        _, info = ui.final(ui.generate_corrected(state, "Write a poem.", None, None, "adaptive", strength, "", 4, 0))
        assert "strength must be a number in 0..3" in info


def test_handlers_open_only_files_gradio_received(state, monkeypatch):
    """Defence in depth behind Gradio's own check: a payload naming a file outside Gradio's upload folder and the
    operator's media roots is refused before it is opened, with one message whether or not it exists."""
    import tempfile

    from explorer.app import ui_inputs

    outside = Path(tempfile.mkdtemp(prefix="sge-outside-"))
    render_image("How do I bake bread?").save(outside / "real.png")
    opened: list = []
    monkeypatch.setattr(ui_inputs, "load_image", lambda *a, **k: opened.append(a))
    statuses = set()
    for path in (outside / "real.png", outside / "missing.png", Path("/etc/passwd")):
        for payload in ({"path": str(path)}, str(path)):
            status = ui.analyse(state, IMAGE_CARRIER, payload, None, 1, "off", 1.0, "", "PCA")["status"]
            statuses.add(status.replace(path.name, "NAME"))
    assert opened == [] and statuses == {"⚠️ 'NAME' was not uploaded through this page; upload the file instead"}


def test_a_setting_being_captured_is_waited_for_not_captured_twice(state, monkeypatch):
    import threading

    from explorer.app import ui_session

    session = state.session
    calls, real = [], ui_session.corrected_calibration
    monkeypatch.setattr(ui_session, "corrected_calibration", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = session.config("fixed", 2.75)  # a setting no other test uses
    results = []
    threads = [threading.Thread(target=lambda: results.append(session.corrected_calibration(config)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(calls) == 1 and len(results) == 3 and all(r is results[0] for r in results)


def test_app_settings_default_to_no_model_switching_and_check_media_roots(tmp_path):
    assert AppSettings().model_switch == "off"  # built in code, the app fails closed
    for bad in ("", "relative/folder", str(tmp_path / "missing")):
        with pytest.raises(ValueError, match="media_roots must be existing absolute folders"):
            AppSettings(media_roots=(Path(bad),))


def test_payloads_that_are_not_files_are_refused_with_a_message(state):
    for payload in ({"url": "http://example.com/x.png"}, 42, {"path": ""}):
        status = ui.analyse(state, IMAGE_CARRIER, payload, None, 1, "off", 1.0, "", "PCA")["status"]
        assert status.startswith("⚠️") and ("did not arrive" in status or "cannot use a int" in status), status


def test_a_symlink_out_of_an_allowed_folder_is_refused(state, tmp_path_factory):
    import os
    import tempfile

    outside = Path(tempfile.mkdtemp(prefix="sge-outside-")) / "secret.png"
    render_image("How do I bake bread?").save(outside)
    inside = tmp_path_factory.getbasetemp() / "link.png"  # inside the state's media root
    inside.unlink(missing_ok=True)
    inside.symlink_to(outside)
    base = tmp_path_factory.getbasetemp()  # /tmp/pytest-of-USER/pytest-N[/popen-gwK under xdist]
    dotted = base / os.path.relpath(outside, base)  # /tmp/... via ..
    assert ".." in dotted.parts
    assert dotted.resolve() == outside.resolve()
    for path in (inside, dotted):
        status = ui.analyse(state, IMAGE_CARRIER, {"path": str(path)}, None, 1, "off", 1.0, "", "PCA")["status"]
        assert "was not uploaded through this page" in status, (path, status)


def test_render_refuses_requests_too_long_to_draw(state):
    image, carrier, status = ui.render_image_input(state, "word " * 200)
    assert image is None and carrier is None and "too long to render" in status


def test_gallery_and_unseen_words_on_a_model_that_lists_them(state, monkeypatch):
    model = state.session.model
    assert story.gallery(state.session) == ("", [])  # no gallery: nothing shown
    monkeypatch.setattr(model, "vocabulary", frozenset({"how", "do", "i", "bake", "bread"}))
    monkeypatch.setattr(model, "gallery", {"items": [
        {"instruction": "Bake bread?", "label": "harmless", "text_refused": False, "image_refused": False,
         "regap_refused": False},
        {"instruction": "Harm x?", "label": "harmful", "text_refused": True, "image_refused": False,
         "regap_refused": True},
        {"instruction": "Harm y?", "label": "harmful", "text_refused": True, "image_refused": False,
         "regap_refused": False}], "harmful_count": 2, "harmful_whole_story": 1, "strength": {"image": 2.0}})
    text, rows = story.gallery(state.session)
    assert "For 1 of the 2 harmful ones (50%) the whole story holds" in text and "α_max image 2" in text
    assert rows[1] == ["Harm x?", "harmful", "text refused → image complied → ReGap refused"]
    _, info = ui.final(ui.generate_plain(state, "How do I bake zqxj bread?", None, None, 4, 0))
    assert "never saw this word in training: “zqxj”" in info and "not meaningful" in info
    _, info = ui.final(ui.generate_plain(state, "How do I bake bread?", None, None, 4, 0))
    assert "never saw" not in info


def test_shiftdc_knows_the_request_of_an_image_the_app_drew_and_asks_for_it_otherwise(state, image_request):
    """The app remembers the request behind the image it rendered (ShiftDC's text counterpart); a picture it did not
    draw has no request, and ShiftDC says so instead of failing obscurely."""
    carrier, image = image_request
    prompt, _ = ui.make_prompt(state.session, state.settings, carrier, np.asarray(image))
    assert prompt.request == ui.EXAMPLE_HARMFUL
    assert _results(state, carrier, image, "shiftdc", 1.0).mode == "shiftdc"
    other = Image.new("RGB", image.size, "white")
    assert ui.make_prompt(state.session, state.settings, carrier, other)[0].request is None
    text, status = ui.final(ui.generate_corrected(state, carrier, other, None, "shiftdc", 1.0, "", 4, 0))
    assert text == "" and "no request text" in status


def test_finished_runs_are_listed_by_default_only_on_a_loopback_server(tmp_path, monkeypatch):
    from app import _parse_args, run_roots_from_args

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run_roots_from_args(_parse_args([])) == [(tmp_path / "runs").resolve()]
    assert run_roots_from_args(_parse_args(["--host", "0.0.0.0"])) == []  # a run holds every answer
    assert run_roots_from_args(_parse_args(["--share"])) == []
    assert run_roots_from_args(_parse_args(["--share", "--runs", "runs"])) == [(tmp_path / "runs").resolve()]
    with pytest.raises(SystemExit, match="no such folder"):
        run_roots_from_args(_parse_args(["--runs", "nope"]))
