"""The web app's page: layout and event wiring only (the handlers live in explorer/app/ui.py); app.py launches it.

`build_app(state)` lays out the page for one loaded `AppState` and wires every event by component name (`Page`);
`build_viewer_app(roots)` is the page without a model, for finished runs only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from explorer.app import story, ui, ui_export
from explorer.app.analysis import FIGURE_TITLES
from explorer.app.ui_inputs import is_local_request
from explorer.app.ui_session import (
    STRENGTH_MAX,
    STRENGTH_STEP,
    AppState,
    temporary_folder,
)
from explorer.core.redact import public_text
from explorer.core.vocab import SAMPLE_RATE
from explorer.evaluation.run_view import (
    ROW_HEADERS,
    list_runs,
    open_run,
    read_run,
    run_rows,
)
from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER

MODEL_CONCURRENCY = 2  # model-running events share this many workers (hooks are per-thread, so this is safe)
#: Events that may wait in the queue (running ones do not count); one more gets Gradio's "queue full" error at
#: once. A model event takes seconds (2-10 s on a GPU for a 7B model), so with MODEL_CONCURRENCY workers the
#: 32nd waits about a minute and a half, about as long as a visitor waits; a click on Generate queues two events.
QUEUE_MAX_SIZE = 32
#: Gradio's cache (uploads, images the app drew, the copies of exports that visitors download): every 15 minutes
#: the files this app put there that are over 2 hours old are deleted (a page left open for an hour still works),
#: and all of them when the server stops.
GRADIO_CACHE_CLEANUP = (900, 7200)
#: Visitor sessions whose state Gradio keeps in memory (it copies the page's components per session, and an API client
#: or a fuzzer opens a new session per request): the least recently used is dropped past this many, instead of
#: Gradio's 10,000 (which let 1,000 requests of a fuzzer add 100 MB+ that stayed). A dropped page starts afresh.
SESSION_CAPACITY = 128
INTRO = """# Safety Geometry Explorer
Why do multimodal models refuse a harmful request as **text** but answer it when the same words arrive as an
**image** or **speech**? The input's modality shifts the hidden states off the refusal direction (*modality drift*).
**ReGap** (Guo et al., arXiv 2605.18104) subtracts that drift, with a strength set by how harmful the probe finds
the input. Type a request, render it as an image or speech, analyse, and compare the answers.
"""
SHARED_MODEL_NOTE = ("ℹ️ **One model for every visitor.** This server serves one model to all its pages: loading "
                     "another switches it for everyone using this server, and their next request runs on it.")
CSS = """
.sge-caption p {color: #444; font-size: 0.92em; margin-top: 0}
.sge-badge p {font-size: 1.02em}
"""


def _bind(state: AppState, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(state, *inputs)` as an event handler; None in its output means "leave that component as it is". The
    request counts as in flight (`state.activity`) while it runs."""

    def convert(values: Any) -> Any:
        if isinstance(values, tuple):
            return tuple(gr.skip() if v is None else v for v in values)
        return gr.skip() if values is None else values

    if inspect.isgeneratorfunction(fn):
        def stream(*inputs: Any) -> Any:
            with state.activity.serving():  # in flight until the stream ends or is closed
                for values in fn(state, *inputs):
                    yield convert(values)
        stream.__name__ = fn.__name__
        return stream

    def call(*inputs: Any) -> Any:
        with state.activity.serving():
            return convert(fn(state, *inputs))
    call.__name__ = fn.__name__  # no functools.wraps: Gradio would read fn's signature, state included
    return call


def _example_media(state: AppState) -> tuple[str | None, str | None]:
    """The example request rendered once, as the start-up model reads it, into the app's temp folder."""
    folder = temporary_folder("sge-examples-")  # removed at exit
    model = state.session.model
    image_path = folder / "example_request.png"
    model.render(ui.EXAMPLE_HARMFUL, "image").image.save(image_path)  # type: ignore[union-attr]
    import soundfile as sf

    from explorer.inputs.speech import SpeechUnavailableError

    audio_path = folder / "example_request.wav"
    try:
        sf.write(audio_path, model.render(ui.EXAMPLE_HARMFUL, "audio").audio, SAMPLE_RATE, subtype="PCM_16")
    except SpeechUnavailableError:  # no speech engine here: the audio example is left out (the page says why)
        return str(image_path), None
    return str(image_path), str(audio_path)


def run_viewer(roots: list[Path]) -> None:
    """The "open a finished run" panel, inside the current Blocks: a run folder's plots and per-item answers, read
    from its files (no model needed). Only folders under `roots` are listed; a visitor cannot type a path."""
    with gr.Row():
        choice = gr.Dropdown(choices=list_runs(roots), value=None, label="Run folder", elem_id="run-choice", scale=4)
        refresh = gr.Button("Refresh list", size="sm", scale=1)
        open_btn = gr.Button("Open run", elem_id="open-run", scale=1)
    summary = gr.Markdown(elem_id="run-summary")
    rates = gr.Plot(label="Refusal rates")
    separability = gr.Plot(label="Separability per layer")
    with gr.Row():
        modality = gr.Dropdown(["all"], value="all", label="Modality", elem_id="run-modality")
        mode = gr.Dropdown(["all"], value="all", label="Mode", elem_id="run-mode")
    table = gr.Dataframe(headers=ROW_HEADERS, label="Per-item answers", elem_id="run-items", wrap=True,
                         interactive=False)

    def show(name: Any) -> tuple:
        try:
            view = open_run(roots, name)
        except Exception as err:  # noqa: BLE001 - a run that cannot be shown is a message, never an error page
            message = ui.problem_message(err)
            gr.Warning(message)
            return (f"⚠️ {message}", None, None, gr.Dropdown(["all"], value="all"),
                    gr.Dropdown(["all"], value="all"), [])
        return (view.summary, view.figures["Refusal rates"], view.figures["Separability per layer"],
                gr.Dropdown(["all", *view.modalities], value="all"), gr.Dropdown(["all", *view.modes], value="all"),
                view.rows())

    def filtered(name: Any, modality_value: Any, mode_value: Any) -> list:
        try:
            return run_rows(read_run(roots, name), str(modality_value or "all"), str(mode_value or "all"))
        except Exception:  # noqa: BLE001 - a filter that cannot be applied shows no rows
            return []

    # preprocess=False: the raw value reaches the handler, which refuses anything that is not a listed run with a
    # message (Gradio's own check would answer an API caller with an error event instead).
    open_btn.click(show, [choice], [summary, rates, separability, modality, mode, table], api_name="open_run",
                   preprocess=False)
    refresh.click(lambda: gr.Dropdown(choices=list_runs(roots)), [], [choice], api_name="list_runs")
    for box in (modality, mode):
        box.input(filtered, [choice, modality, mode], [table], preprocess=False)


def build_viewer_app(roots: list[Path]) -> gr.Blocks:
    """The app without a model: only finished runs (`python app.py --model none --runs DIR`)."""
    with gr.Blocks(title="Safety Geometry Explorer: runs", delete_cache=GRADIO_CACHE_CLEANUP) as demo:
        gr.Markdown(INTRO + "\n**No model is loaded**: open a finished evaluation run below "
                    "(`python -m explorer eval ... --out DIR` writes one).")
        run_viewer(roots)
    return demo.queue(max_size=QUEUE_MAX_SIZE)


#: The page's components by name: the layout functions add them, the events are wired by these names (never by
#: position), and a handler that returns {name: value} sets exactly those names (explorer/app/ui.py).
Page = dict[str, Any]


def _named(handler: Callable[..., dict[str, Any]], names: Sequence[str]) -> Callable[..., tuple]:
    """`handler(*inputs)` → {name: value} as an event handler for the outputs `names`, in that order; a name it
    leaves out keeps its component as it is (a name set to None clears it)."""

    def call(*inputs: Any) -> tuple:
        out = handler(*inputs)
        return tuple(out[name] if name in out else gr.skip() for name in names)

    call.__name__ = getattr(handler, "__name__", "handler")
    return call


def _model_panel(page: Page, state: AppState) -> None:
    """The model line and the "Model" accordion (load another model)."""
    session = state.session
    page["model_info"] = gr.Markdown(public_text(session.describe()), elem_id="model-info")
    with gr.Accordion("Model", open=False):
        gr.Markdown(SHARED_MODEL_NOTE, elem_id="shared-model-note")
        with gr.Row():
            page["model_box"] = gr.Textbox(value=public_text(session.model.name),
                                           label="Model (Hugging Face id, local folder, or demo)", scale=4)
            page["load_btn"] = gr.Button("Load", scale=1)
        page["load_status"] = gr.Markdown()


def _request_column(page: Page, state: AppState) -> None:
    """The request: typed text, rendered or uploaded image and audio, one-click examples."""
    page["prompt"] = gr.Textbox(label="Request", lines=2, placeholder="Type a request, e.g. a question",
                                elem_id="prompt")
    with gr.Row():
        page["as_image_btn"] = gr.Button("Render as image", size="sm")
        page["as_audio_btn"] = gr.Button("Render as speech", size="sm")
    with gr.Row():
        with gr.Column(min_width=260):
            # The label sits above the picture, not on it: a label drawn over the image hid the first word of a
            # rendered request.
            gr.Markdown("**Image** (optional): the request drawn as words, or your own picture")
            page["image"] = gr.Image(label="Image (optional)", show_label=False, type="pil", format="png",
                                     height=320, sources=["upload", "clipboard", "webcam"], elem_id="image-input")
        with gr.Column(min_width=260):
            gr.Markdown("**Audio** (optional): the request spoken, or your own recording")
            page["audio"] = gr.Audio(label="Audio (optional)", show_label=False, sources=["upload", "microphone"],
                                     type="filepath", format="wav", elem_id="audio-input")
    image_example, audio_example = _example_media(state)
    examples = [[ui.EXAMPLE_HARMFUL, None, None]]
    if image_example:
        examples.append([IMAGE_CARRIER, image_example, None])
    if audio_example:
        examples.append([AUDIO_CARRIER, None, audio_example])
    examples.append([ui.EXAMPLE_LOOKALIKE, None, None])
    gr.Examples(examples, inputs=[page["prompt"], page["image"], page["audio"]], label="Examples (one click)")


def _settings_column(page: Page, state: AppState) -> None:
    """What to show and how to correct: layer, mode, strength, layers, map, tokens, seed; the action buttons."""
    session = state.session
    page["layer"] = gr.Slider(0, session.num_layers - 1, value=session.default_layer(), step=1, label="Layer shown",
                              info="the layer the 2-D map draws (starts at the probe layer)")
    page["mode"] = gr.Radio(list(ui.MODES), value="adaptive", label="Correction mode")
    start_strength, strength_origin = session.starting_strength()
    page["strength"] = gr.Slider(0, STRENGTH_MAX, value=start_strength, step=STRENGTH_STEP,
                                 label="Strength (α, or α_max for adaptive)", info=strength_origin, elem_id="strength")
    with gr.Row():
        page["layers_text"] = gr.Textbox(value=session.layers_text(), label='Corrected layers ("2" or "2-3")',
                                         info=session.layers_info(), elem_id="layers-text")
        page["method"] = gr.Radio(["UMAP", "PCA"], value="UMAP", label="2-D map")
    with gr.Row():
        page["max_tokens"] = gr.Slider(1, state.settings.max_new_tokens_limit, value=48, step=1,
                                       label="Max new tokens")
        page["seed"] = gr.Number(value=0, precision=0, label="Seed (0 = greedy)")
    with gr.Row():
        page["analyse_btn"] = gr.Button("Analyse", variant="primary", elem_id="analyse-btn")
        page["generate_btn"] = gr.Button("Generate", variant="primary", elem_id="generate-btn")
    page["collapse_btn"] = gr.Button("Show the collapse", variant="secondary", elem_id="collapse-btn")


def _gallery(page: Page, state: AppState) -> list[list[str]]:
    """The held-out gallery (a model card's, when it has one) → its rows (empty: no gallery on the page)."""
    gallery_text, rows = story.gallery(state.session)
    if rows:
        with gr.Accordion(f"Gallery: {len(rows)} held-out requests this model reads", open=False, elem_id="gallery"):
            gr.Markdown(gallery_text, elem_id="gallery-info")
            page["gallery_table"] = gr.Dataset(components=[gr.Textbox(visible=False, label="Request"),
                                                           gr.Textbox(visible=False, label="Label"),
                                                           gr.Textbox(visible=False, label="Measured")],
                                               samples=rows, samples_per_page=30, elem_id="gallery-table")
    return rows


def _results(page: Page) -> None:
    """Status, the collapse story, the two answers, the three plots with captions, Export."""
    page["status"] = gr.Markdown(elem_id="status")
    page["story"] = gr.Markdown(elem_id="story")
    with gr.Row():
        with gr.Column():
            page["plain_text"] = gr.Textbox(label="Without correction", lines=4, interactive=False,
                                            elem_id="plain-out")
            page["plain_info"] = gr.Markdown(elem_id="plain-info", elem_classes="sge-badge")
        with gr.Column():
            page["corrected_text"] = gr.Textbox(label="With correction", lines=4, interactive=False,
                                                elem_id="corrected-out")
            page["corrected_info"] = gr.Markdown(elem_id="corrected-info", elem_classes="sge-badge")
    for name, title in FIGURE_TITLES.items():
        page[f"fig_{name}"] = gr.Plot(label=title)
        page[f"cap_{name}"] = gr.Markdown(elem_classes="sge-caption")
    with gr.Accordion("Export", open=False):
        page["export_btn"] = gr.Button("Export metrics, directions, figures and report", elem_id="export-btn")
        page["files"] = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="export-files")


def build_app(state: AppState, run_roots: list[Path] | None = None) -> gr.Blocks:
    """The app for one `AppState` (tests launch it on a tiny model); `run_roots` adds the run viewer."""
    page: Page = {}
    with gr.Blocks(title="Safety Geometry Explorer", delete_cache=GRADIO_CACHE_CLEANUP) as demo:
        gr.Markdown(INTRO)
        if run_roots:
            with gr.Accordion("Open a finished run (no model needed)", open=False):
                run_viewer(run_roots)
        _model_panel(page, state)
        page["sid"] = gr.State("")
        with gr.Row():
            with gr.Column(scale=5):
                _request_column(page, state)
            with gr.Column(scale=4):
                _settings_column(page, state)
        gallery_rows = _gallery(page, state)
        _results(page)
        _wire_model_events(page, state)
        _wire_page_events(page, state, gallery_rows)
    return demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=QUEUE_MAX_SIZE)


def _wire_model_events(page: Page, state: AppState) -> None:
    """The events that run the model (Analyse, Generate, the strength slider, Show the collapse, Export); each reads
    raw values (preprocess=False): the handlers check every one and answer with a message."""
    model_event = {"concurrency_id": "model", "concurrency_limit": MODEL_CONCURRENCY, "preprocess": False}
    media = ["prompt", "image", "audio"]
    correction = ["mode", "strength", "layers_text"]

    def wire(trigger: Any, handler: Callable[..., Any], inputs: Sequence[str], outputs: Sequence[str],
             api_name: str, **options: Any) -> None:
        trigger(handler, [page[n] for n in inputs], [page[n] for n in outputs], api_name=api_name,
                **{**model_event, **options})

    analysis = [*(f"fig_{name}" for name in FIGURE_TITLES), *(f"cap_{name}" for name in FIGURE_TITLES), "status"]
    wire(page["analyse_btn"].click, _named(_bind(state, ui.analyse), analysis),
         [*media, "layer", *correction, "method"], analysis, "analyse")
    tokens = ["max_tokens", "seed"]
    wire(page["generate_btn"].click, _bind(state, ui.generate_plain), [*media, *tokens], ["plain_text", "plain_info"],
         "generate_plain")
    corrected = ([*media, *correction, *tokens], ["corrected_text", "corrected_info"])
    wire(page["generate_btn"].click, _bind(state, ui.generate_corrected), *corrected, "generate_corrected")
    wire(page["strength"].release, _bind(state, ui.generate_corrected), *corrected, "strength_release",
         trigger_mode="always_last")
    told = ["status", "story", *media, *correction, "layer", *analysis[:-1], "plain_text", "plain_info",
            "corrected_text", "corrected_info"]
    wire(page["collapse_btn"].click, _named(_bind(state, story.show_collapse), told),
         ["max_tokens", "method"], told, "show_collapse")
    wire(page["export_btn"].click, _bind(state, ui_export.export),
         ["sid", *media, "layer", *correction, "method", "plain_text", "plain_info", "corrected_text",
          "corrected_info"], ["files", "sid", "status"], "export")


def _wire_page_events(page: Page, state: AppState, gallery_rows: list[list[str]]) -> None:
    """The events that only render or set up the page: render as image / speech, a mode's defaults, the gallery,
    loading another model."""
    raw = {"preprocess": False}  # the handler checks the raw value and answers with a message
    page["as_image_btn"].click(_bind(state, ui.render_image_input), [page["prompt"]],
                               [page["image"], page["prompt"], page["status"]], api_name="render_image", **raw)
    page["as_audio_btn"].click(_bind(state, ui.render_audio_input), [page["prompt"]],
                               [page["audio"], page["prompt"], page["status"]], api_name="render_audio", **raw)

    def mode_defaults(chosen_mode: Any) -> tuple:
        if not isinstance(chosen_mode, str) or chosen_mode not in ui.MODES:
            raise gr.Error(f"correction mode must be one of {', '.join(ui.MODES)}")
        value, origin = ui.strength_for_mode(state, chosen_mode)
        layers_value, layers_info = ui.layers_for_mode(state, chosen_mode)
        return gr.Slider(value=value, info=origin), gr.Textbox(value=layers_value, info=layers_info)

    page["mode"].change(mode_defaults, [page["mode"]], [page["strength"], page["layers_text"]],
                        api_name="mode_defaults", **raw)
    if gallery_rows:
        def gallery_pick(index: Any) -> tuple:
            """The picked gallery request into the request box (raw: the row's index, checked here)."""
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(gallery_rows):
                raise gr.Error(f"pick a gallery row (0..{len(gallery_rows) - 1})")
            return gallery_rows[index][0], None, None

        request = [page["prompt"], page["image"], page["audio"]]
        page["gallery_table"].click(gallery_pick, [page["gallery_table"]], request, api_name="gallery_pick", **raw)

    def load(model_id: str, request: gr.Request, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        local = is_local_request(request.client.host if request.client else None, request.headers)
        out = ui.load_model_ui(state, model_id, progress=lambda f, msg: progress(f, desc=msg), local=local)
        slider = gr.Slider(0, out["num_layers"] - 1, value=out["layer"], step=1, label="Layer shown")
        return (out["status"], out["info"], slider, gr.Textbox(value=out["layers_text"], info=out["layers_info"]),
                gr.Slider(value=out["strength"], info=out["strength_info"]))

    shown = [page[n] for n in ("load_status", "model_info", "layer", "layers_text", "strength")]
    page["load_btn"].click(load, [page["model_box"]], shown, api_name="load_model", concurrency_id="load",
                           concurrency_limit=1, **raw)


#: How app.py launches either app (the tests launch theirs with the same). Gradio's `show_error` stays off: the
#: handlers turn every problem into a message themselves, so what reaches Gradio is only its own refusal of a payload
#: it cannot take (a file reference that is not an upload, a value of the wrong shape), and its messages for those
#: can name the server's working folder; the visitor sees a bare "Error" instead.
LAUNCH_OPTIONS: dict[str, Any] = {"max_file_size": "20mb", "allowed_paths": [], "css": CSS, "footer_links": ["api"],
                                  "state_session_capacity": SESSION_CAPACITY}
