"""State behind the web app: the loaded model with its calibration, and what requests share.

`AppState` holds the model currently served (a `ModelSession`); loading another one builds a new session
and swaps it in only when it is complete, so a failed load leaves the previous model serving and requests
already running keep the session they started with. A `ModelSession` caches what several requests share:
calibration states re-captured with a correction on (once per correction), and 2-D embeddings; both bounded
(LRU). `explorer.app.analysis.compute_analysis` turns one prompt and correction into the figures.

Corrections are applied only through `explorer.correction.regap.corrected(...)` inside the calling thread, so an
analysis steered for one user never touches another user's forward passes.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, get_args

import numpy as np
import torch

from explorer.app.activity import Activity
from explorer.core.storage import CacheDir
from explorer.core.vocab import MEDIA_MODALITIES, check_choice
from explorer.correction.regap import (
    CorrectedStates,
    CorrectionConfig,
    capture_corrected,
    choose_defaults,
)
from explorer.evaluation.calibration import (
    Calibration,
    calibrate,
    calibration_source_for,
    corrected_calibration,
    load_calibration_items,
)
from explorer.evaluation.judge import RefusalJudge
from explorer.geometry.embedding import embed_2d, warm_up_umap
from explorer.geometry.formulas import cos_per_layer, modality_drift
from explorer.geometry.layer_metrics import per_layer_block, separation_per_layer
from explorer.geometry.profile import Profile
from explorer.inputs.media import Prompt
from explorer.inputs.speech_engine import INSTALL_COMMAND, PIP_COMMAND
from explorer.model.capture import CaptureSettings, capture_prompts
from explorer.model.loading import load_model
from explorer.model.models import LoadedModel
from explorer.model.states import StateBatch

__all__ = ["AppSettings", "AppState", "ModelSession", "ProgressFn", "STRENGTH_MAX", "build_session"]

ProgressFn = Callable[[float, str], None]
logger = logging.getLogger(__name__)
#: Corrected calibration captures / embeddings kept in memory per model session (LRU). Worst case in bytes: one
#: capture is media modalities × calibration items × layers × hidden × 4 B, so 8 of them hold 8 × 115 MB ≈ 0.9 GB
#: for a 7B image model (32 × 4096) on the 220-item builtin split (1.8 GB with audio too) and ≈ 6 MB for the demo
#: (80 items); an embedding is [points, 2] float (≈ 16 KB); `_rendered` keeps 64 requests of ≤ 2,000 characters.
_CACHE_ENTRIES = 8
#: UMAP compiles after this long without a request in flight, or after WARM_UP_WAIT_S whatever the traffic.
WARM_UP_QUIET_S, WARM_UP_WAIT_S = 2.0, 30.0
STRENGTH_MAX = 3.0  # the strength slider's top, and the largest α (or α_max) any request may ask for
#: the strength slider's step: every α `--strength auto` can choose (its grids, bisected twice) is a multiple of it,
#: so the page starts exactly at the chosen α (tests/test_strength.py)
STRENGTH_STEP = 0.0125
ModelSwitch = Literal["any", "local", "listed", "off"]


@dataclass(frozen=True)
class AppSettings:
    """How the app loads and calibrates models, and what a visitor may do (the command-line arguments of app.py).

    `model_switch`: "local" any model id, but only in a request from this machine that names this machine (a
    loopback peer, a loopback Host header, no proxy headers: `ui_inputs.is_local_request`); "any" model id from
    anyone (the operator's --allow-model-switch); "listed" only those in `allowed_models`; or "off". The served
    model is one for all visitors: a switch changes it for everyone, and the page says so. `media_roots`: folders besides Gradio's upload folder whose files a request may
    name (tests, or an operator who serves a folder of examples).
    """

    model: str = "demo"
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    calibration: str = "default"  # the model's own source (the demo: the validation file it never trained on)
    calibration_limit: int | None = None
    cache_dir: CacheDir = "default"
    max_image_pixels: int = 20_000_000
    max_audio_seconds: float = 30.0
    max_prompt_chars: int = 2000
    max_new_tokens_limit: int = 256
    model_switch: ModelSwitch = "off"  # app.py opens it on a loopback-only server (settings_from_args)
    allowed_models: tuple[str, ...] = ()
    media_roots: tuple[Path, ...] = ()
    # Exports (`ui_export.prune_exports`): the folders of the latest `exports_kept` browser sessions that exported,
    # none older than `export_max_age_s`. One export is ≈ 14 MB for a 7B model (a 6 MB profile, plotly.js twice).
    exports_kept: int = 16
    export_max_age_s: float = 3600.0

    def __post_init__(self) -> None:
        check_choice("model_switch", self.model_switch, get_args(ModelSwitch))
        if self.exports_kept < 1 or not self.export_max_age_s > 0:
            raise ValueError(f"exports_kept must be ≥ 1 and export_max_age_s > 0; got {self.exports_kept} and "
                             f"{self.export_max_age_s}")
        for root in self.media_roots:  # "" would resolve to the working directory: the whole checkout
            if not Path(root).is_absolute() or not Path(root).is_dir():
                raise ValueError(f"media_roots must be existing absolute folders; got {str(root)!r}")


class ModelSession:
    """One loaded model, its calibration profile and the caches derived from them."""

    def __init__(self, model: LoadedModel, calibration: Calibration, source: str, cache_dir: CacheDir = None) -> None:
        self.model = model
        self.calibration = calibration
        self.source = source  # the calibration file ("builtin" or a path)
        self.cache_dir = cache_dir
        self.defaults = choose_defaults(calibration.profile)
        self.judge = RefusalJudge()
        pooling = str(calibration.profile.capture_settings.get("pooling", "last"))
        self.capture_settings = CaptureSettings(pooling=pooling)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._corrected: OrderedDict[tuple, StateBatch | None] = OrderedDict()
        self._computing: dict[tuple, threading.Event] = {}  # corrections being captured right now
        self._embeddings: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._separation: dict[str, tuple[dict[str, list], int]] = {}  # uncorrected, per modality
        self._rendered: OrderedDict[tuple[str, str], str] = OrderedDict()  # (modality, media key) → request

    def remember_render(self, prompt: Prompt) -> None:
        """Remember the request behind a medium the app drew or spoke, so a later prompt carrying the same medium
        gets its text counterpart (ShiftDC needs it; an uploaded file has none)."""
        if prompt.request is None:
            return
        with self._lock:
            self._rendered[(prompt.modality, prompt.key)] = prompt.request
            while len(self._rendered) > 64:
                self._rendered.popitem(last=False)

    def rendered_request(self, modality: str, media_key: str) -> str | None:
        """The request the app rendered as this medium (by its content key), if it did."""
        with self._lock:
            return self._rendered.get((modality, media_key))

    @property
    def profile(self) -> Profile:
        return self.calibration.profile

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def default_layer(self) -> int:
        """The layer shown first: the probe layer, where ReGap reads the refusal score."""
        probe = self.defaults.probe_layer
        return probe if probe is not None else self.defaults.layers[-1]

    def _chosen_strengths(self, mode: str) -> dict[str, float]:
        """{modality: α} that `--strength auto` chose on calibration for `mode` itself: every mode, the ablation
        adaptive_raw included, runs at its own α, as in the CLI (explorer.evaluation.strength.choose_strength)."""
        return self.model.suggested_strengths.get(mode, {})

    def suggested_strength(self, modality: str, mode: str = "adaptive") -> float:
        """α to start from: the one chosen on calibration for this model, mode and modality when known, else 1."""
        return self._chosen_strengths(mode).get(modality, 1.0)

    def starting_strength(self, mode: str = "adaptive") -> tuple[float, str]:
        """The strength the page starts from for `mode`, and a sentence saying where it came from (each correcting
        mode has its own α, chosen under the same budget: a baseline never starts at ReGap's)."""
        chosen = self._chosen_strengths(mode)
        media = [m for m in self.model.modalities if m in chosen]
        if not media:
            return 1.0, f"starts at 1: no strength chosen on calibration is recorded for {mode} on these weights"
        listed = ", ".join(f"{m} {chosen[m]:g}" for m in media)
        return chosen[media[0]], (f"starts at {chosen[media[0]]:g}: the α that `--strength auto` chose for {mode} "
                                  f"on calibration for these exact weights ({listed})")

    def layers_info(self) -> str:
        """What "corrected layers", "layer shown" and the probe layer each mean, with this model's defaults."""
        return (f"where ReGap subtracts the drift (default {self.layers_text()}, chosen on calibration); ReGap reads "
                f"s(x) at the probe layer {self.defaults.probe_layer}, after them. \"Layer shown\" only picks the "
                "layer the 2-D map draws.")

    def layers_text(self, layers: Sequence[int] | None = None) -> str:
        layers = tuple(layers if layers is not None else self.defaults.layers)
        return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"

    def describe(self) -> str:
        """Markdown: model name, layer count, calibration size (and the demo disclaimer)."""
        items = self.calibration.items
        harmful = sum(item.label == "harmful" for item in items)
        mods = self.profile.modalities
        lines = [
            f"**Model:** `{self.model.name}` · **layers:** {self.num_layers} · **inputs:** {', '.join(self.model.modalities)}"
            f" · **calibration:** {len(items)} requests ({harmful} harmful, {len(items) - harmful} harmless) × "
            f"{len(mods)} modalities = {len(self.calibration.states)} states"
            f" · **default correction:** layer {self.layers_text()}, probe layer {self.defaults.probe_layer}",
        ]
        if "audio" in self.model.modalities and "audio" not in mods:  # calibrated without a speech engine
            lines.append(
                "> ⚠️ **Speech is unavailable on this server** (no espeak-ng), so the audio calibration is left out "
                "and \"Render as speech\" cannot speak; an uploaded clip is still heard, without a correction. To get "
                f"speech: `{INSTALL_COMMAND}` (the demo's own speech) or `{PIP_COMMAND}`, then restart the app.")
        if self.model.notice:
            lines.append(f"> ℹ️ {self.model.notice}")
        return "\n\n".join(lines)

    def config(self, mode: str, strength: float, layers: Sequence[int] = ()) -> CorrectionConfig:
        """A validated, resolved correction config (empty layers → calibrated default). Raises ValueError."""
        return CorrectionConfig(mode=mode, strength=float(strength), layers=tuple(layers)).resolved(self.profile)  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------------------
    # States

    def capture(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Uncorrected [n, L, d] states of prompts of one modality."""
        return capture_prompts(self.model, prompts, self.capture_settings)

    def capture_corrected(self, prompts: Sequence[Prompt], config: CorrectionConfig) -> CorrectedStates:
        """States with the correction on, each prompt at the α that `generation.generate` would give it."""
        return capture_corrected(self.model, prompts, self.profile, config, self.capture_settings)

    def corrected_calibration(self, config: CorrectionConfig) -> StateBatch | None:
        """The non-text calibration states re-captured with `config` on (cached per correction)."""
        if config.mode == "off":
            return None
        key = (config.mode, round(config.strength, 4), config.layers, config.probe_layer, config.rule,
               config.positions, config.threshold, config.temperature, config.modality_strengths,
               config.modality_thresholds)
        while True:  # a setting another request (or the start-up warm-up) is capturing is waited for, not redone
            with self._lock:
                if key in self._corrected:
                    self._corrected.move_to_end(key)
                    return self._corrected[key]
                running = self._computing.get(key)
                if running is None:
                    running = self._computing[key] = threading.Event()
                    break
            running.wait()
        try:
            batch = corrected_calibration(self.model, self.calibration, config, self.capture_settings, self.cache_dir)
            self._remember(self._corrected, key, batch)
            return batch
        finally:
            with self._lock:
                self._computing.pop(key, None)
            running.set()

    def embedding(self, key: tuple, states: torch.Tensor, method: str) -> np.ndarray:
        with self._lock:
            if key in self._embeddings:
                return self._embeddings[key]
        coords = embed_2d(states, method=method, seed=0)  # type: ignore[arg-type]
        self._remember(self._embeddings, key, coords)
        return coords

    def _remember(self, cache: OrderedDict, key: tuple, value: Any) -> None:
        """Keep `value` in a per-setting cache, dropping the least recently used beyond `_CACHE_ENTRIES`."""
        with self._lock:
            cache[key] = value
            while len(cache) > _CACHE_ENTRIES:
                cache.popitem(last=False)

    # ---------------------------------------------------------------------------------------------
    # Metrics for the separability plot and the export

    def _uncorrected_separation(self, modality: str) -> tuple[dict[str, list], int]:
        """`separation_per_layer` of the calibration states of `modality` and their count (computed once per
        session: the bootstrap interval is the slow part)."""
        with self._lock:
            if modality not in self._separation:
                part = self.calibration.states.select(modality=modality)
                self._separation[modality] = (
                    separation_per_layer(self.profile, self.profile.project(part.states), part.labels), len(part))
            return self._separation[modality]

    def layer_metrics(self, corrected_batch: StateBatch | None, mode: str) -> dict[str, Any]:
        """metrics.json's `per_layer` block, computed as `eval` computes it (explorer.geometry.layer_metrics):
        "<modality>/off" on the calibration states, "<modality>/<mode>" on them as corrected. Two keys only the app
        has, since only it draws them: `drift_norm_corrected` and `cos_drift_refusal_corrected`, the drift left
        after the correction (formula 5 on the corrected states), keyed "<modality>/<mode>"."""
        profile = self.profile
        separation, counts = {}, {}
        for modality in profile.modalities:
            separation[f"{modality}/off"], counts[f"{modality}/off"] = self._uncorrected_separation(modality)
        left: dict[str, dict[str, list[float]]] = {"drift_norm_corrected": {}, "cos_drift_refusal_corrected": {}}
        if corrected_batch is not None:
            text = self.calibration.states.select(modality="text")
            for modality in MEDIA_MODALITIES:
                part = corrected_batch.select(modality=modality)
                if len(part) == 0:
                    continue
                key = f"{modality}/{mode}"
                separation[key] = separation_per_layer(profile, profile.project(part.states), part.labels)
                counts[key] = len(part)
                drift = modality_drift(text.concat(part), modality)
                left["drift_norm_corrected"][key] = [float(x) for x in drift.double().norm(dim=-1)]
                left["cos_drift_refusal_corrected"][key] = cos_per_layer(drift, profile.refusal_dirs)
        return {**per_layer_block(profile, separation, counts), **left}

def build_session(settings: AppSettings, model_id: str, progress: ProgressFn | None = None) -> ModelSession:
    """Load and calibrate `model_id` (calibration states come from the disk cache when present)."""
    say = progress or (lambda fraction, message: None)
    say(0.05, f"loading {model_id}")
    # The operator's --trust-remote-code is for the model the operator named, never for one a visitor types.
    trusted = settings.trust_remote_code and model_id == settings.model
    model = load_model(model_id, device=settings.device, dtype=settings.dtype,  # type: ignore[arg-type]
                       device_map=settings.device_map, trust_remote_code=trusted)
    say(0.4, "calibrating: capturing the calibration set in every modality (cached on disk after the first run)")
    items = load_calibration_items(calibration_source_for(settings.calibration, model), settings.calibration_limit)
    calibration = calibrate(model, items, cache_dir=settings.cache_dir, progress=progress is not None)
    say(0.9, "model and calibration ready")
    return ModelSession(model, calibration, calibration_source_for(settings.calibration, model), settings.cache_dir)


def temporary_folder(prefix: str) -> Path:
    """A new folder under the system's temp folder, removed with its contents when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@dataclass
class AppState:
    """What the running app shares between requests: the served model session and the export folder."""

    settings: AppSettings
    session: ModelSession
    export_root: Path = field(default_factory=lambda: temporary_folder("sge-exports-"))
    umap_ready: threading.Event = field(default_factory=threading.Event)
    activity: Activity = field(default_factory=Activity)
    _load_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, settings: AppSettings, warm_up: bool = True, progress: ProgressFn | None = None) -> "AppState":
        """Load the start-up model; then, in the background, what the first visitor will need (`start_warm_up`)."""
        state = cls(settings=settings, session=build_session(settings, settings.model, progress))
        if warm_up:
            state.start_warm_up()
        return state

    def start_warm_up(self) -> threading.Thread:
        """In the background, one after the other so they never compete for the cores with each other: the
        calibration re-captured under the page's starting correction (the first "Analyse" then only reads it;
        a request for the same setting meanwhile waits for it instead of redoing it), then UMAP's compilation,
        once no request has been in flight for WARM_UP_QUIET_S (at the latest after WARM_UP_WAIT_S): it would
        double the time of a request beside it. Requests are served all along; until UMAP is ready the map uses
        PCA and says so."""
        session = self.session

        def work() -> None:
            try:
                session.corrected_calibration(session.config("adaptive", session.starting_strength()[0]))
            except Exception:  # noqa: BLE001 - a failed warm-up only costs the first request its time
                logger.warning("warming up the default correction failed", exc_info=True)
            self.activity.wait_until_quiet(WARM_UP_QUIET_S, WARM_UP_WAIT_S)
            try:
                warm_up_umap()
                self.umap_ready.set()
            except Exception:  # noqa: BLE001 - UMAP is optional; PCA keeps working
                logger.warning("UMAP warm-up failed; the map uses PCA", exc_info=True)

        thread = threading.Thread(target=work, name="warm-up", daemon=True)
        thread.start()
        return thread

    def swap_model(self, model_id: str, progress: ProgressFn | None = None) -> ModelSession:
        """Load `model_id` and serve it; on any error the previous session keeps serving (the error propagates)."""
        with self._load_lock:
            session = build_session(self.settings, model_id, progress)
            self.session = session
            return session
