"""Find and load a model: a Hugging Face id, a saved model folder, or a composite folder with a manifest.

Why one loader: the CLI, the app, the demo's own measurements and the benchmarks all load through
`load_model`, so a model is read, placed on its devices and fingerprinted (`revision`, part of every cache key)
the same way everywhere. A folder with `manifest.json` is a composite model (`Manifest`): the built-in demo is
one, described by data in its folder rather than by code. `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from explorer.core.vocab import Modality
from explorer.inputs.media import DEFAULT_LAYOUT
from explorer.model.manifest import MANIFEST_FILE, Manifest
from explorer.model.model_view import text_layout_for
from explorer.model.models import (
    SUPPORTED_FAMILIES,
    Backend,
    LoadedModel,
    MediaStyle,
    ModelLoadError,
    chat_messages,
    render_chat,
)

__all__ = [
    "ASSETS_DIR",
    "DEMO_MODEL_DIR",
    "find_decoder_layers",
    "folder_revision",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "weights_revision",
]


ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


DEMO_MODEL_DIR = ASSETS_DIR / "demo_model"


_FAMILY_LIST = ", ".join(sorted(SUPPORTED_FAMILIES)) + ", and 'demo'"


DeviceArg = Literal["auto", "cpu", "cuda"] | str


DtypeArg = Literal["auto", "float32", "bfloat16", "float16"]


def resolve_device(device: DeviceArg = "auto") -> torch.device:
    """`auto` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return resolved


def resolve_dtype(dtype: DtypeArg, device: torch.device) -> torch.dtype:
    """The torch dtype for `dtype` on `device` ("auto": bf16 on Ampere+ GPUs, fp16 on older GPUs, fp32 on a CPU)."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        raise ModelLoadError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(allowed)}")
    return allowed[dtype]


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """The decoder's layer list: an explicit dotted path, else `get_decoder().layers`, else a name search."""
    if layers_path:
        module: Any = model
        for part in layers_path.split("."):
            module = getattr(module, part, None)
            if module is None:
                raise ModelLoadError(f"layers_path {layers_path!r} does not exist in {type(model).__name__}")
        return module
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    if decoder is not None and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder.layers
    expected = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) == expected:
            if "vision" not in name and "audio" not in name and "visual" not in name:
                return module
    raise ModelLoadError(
        f"could not find the decoder layers of {type(model).__name__}; pass layers_path='model.language_model.layers'"
        " (the dotted path to the nn.ModuleList of decoder layers)"
    )


def weights_revision(folder: Path, config: Any) -> str:
    """A cheap fingerprint of the weights: hub commit if known, else config + weight file sizes and edges."""
    commit = getattr(config, "_commit_hash", None)
    digest = hashlib.sha256((commit or "").encode())
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def register_own_families() -> None:
    """Make transformers' Auto classes know this project's own families (the reading LM); imported on first use so
    that importing the explorer stays light."""
    from . import reading_processor  # noqa: F401  (registers on import)


def _load_backend(
    source: str, device: torch.device, dtype: torch.dtype, device_map: str | None, trust_remote_code: bool
) -> tuple[Backend, Any, Path | None]:
    from transformers import AutoConfig, AutoProcessor

    register_own_families()

    folder = Path(source)
    if folder.exists() and not (folder / "config.json").is_file():
        raise ModelLoadError(f"{source} is a folder but not a model: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load {source!r}: not a local model folder and not a reachable Hugging Face model id "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Supported families: {_FAMILY_LIST}"
        ) from err
    family = config.model_type
    if family not in SUPPORTED_FAMILIES and not trust_remote_code:
        raise ModelLoadError(
            f"{source!r} is a {family!r} model, which this tool does not support; supported: {_FAMILY_LIST}"
        )
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        if family == "qwen2_5_omni":
            from transformers import Qwen2_5OmniForConditionalGeneration

            model = Qwen2_5OmniForConditionalGeneration.from_pretrained(source, enable_audio_output=False, **kwargs)
            model = model.thinker  # the text-generating part; the talker (speech output) is not needed
        else:
            model = _multimodal_class(config, trust_remote_code).from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except torch.cuda.OutOfMemoryError as err:
        raise ModelLoadError(
            f"out of GPU memory while loading {source!r}; try --dtype bfloat16, --device-map auto, or a smaller model"
        ) from err
    except ImportError as err:
        raise ModelLoadError(f"cannot load {source!r}: a dependency is missing: {err}") from err
    if not device_map:
        model = model.to(device)
    model.eval()
    return Backend(model=model, processor=processor, family=family), config, folder if folder.exists() else None


def _multimodal_class(config: Any, trust_remote_code: bool) -> Any:
    """The class AutoModelForMultimodalLM maps this config to, looked up for this one config: the Auto class's own
    `from_pretrained` first lists every config class it knows, importing hundreds of transformers modules (about
    1.5 s of a warm start on 2 cores). Remote code, or a mapping this lookup cannot read, goes through the Auto
    class as before."""
    from transformers import AutoModelForMultimodalLM

    if not trust_remote_code:
        try:
            found = AutoModelForMultimodalLM._model_mapping[type(config)]
        except (AttributeError, KeyError, TypeError, ValueError):
            found = None
        if isinstance(found, type):
            return found
    return AutoModelForMultimodalLM


def folder_revision(folder: Path) -> str:
    """The revision of a local model folder: a plain model's weight fingerprint; for a composite folder the
    first backend's fingerprint followed by the first 8 hex digits of each further backend's."""
    from transformers import AutoConfig

    register_own_families()
    if not (folder / MANIFEST_FILE).is_file():
        return weights_revision(folder, AutoConfig.from_pretrained(folder))
    parts = [weights_revision(sub, AutoConfig.from_pretrained(sub)) for sub in Manifest.read(folder).distinct_folders()]
    return parts[0] + "".join(part[:8] for part in parts[1:])


def _load_composite(folder: Path, device: torch.device, dtype: torch.dtype, device_map: str | None) -> LoadedModel:
    manifest = Manifest.read(folder)
    loaded: dict[Path, Backend] = {}
    for sub in manifest.distinct_folders():
        loaded[sub], _, _ = _load_backend(str(sub), device, dtype, device_map, False)
    backends: dict[Modality, Backend] = {m: loaded[folder / name] for m, name in manifest.backends.items()}
    first = backends["text"]
    if manifest.shared_language_model:
        for other in loaded.values():
            if other is not first:
                _share_language_model(source=first.model, target=other.model)
    revision = folder_revision(folder)
    return LoadedModel(
        name="demo" if folder.resolve() == DEMO_MODEL_DIR.resolve() else folder.name,
        backends=backends,
        layers=find_decoder_layers(first.model),
        hidden_size=first.model.config.get_text_config().hidden_size,
        revision=revision,
        device=next(first.model.parameters()).device,
        dtype=dtype,
        media=media_style_for(backends, manifest.media),
        notice=manifest.notice,
        card=folder / manifest.card if manifest.card else None,
        suggested_strengths=_chosen_strengths(folder / manifest.strengths_from, revision)
        if manifest.strengths_from else {},
        vocabulary=_word_list(folder / manifest.vocabulary) if manifest.vocabulary else frozenset(),
        gallery=_same_weights_json(folder / manifest.gallery, revision) if manifest.gallery else None,
        calibration_source=manifest.calibration,
    )


def media_style_for(backends: dict[Modality, Backend], given: MediaStyle = MediaStyle(image_layout=None)) -> MediaStyle:
    """How to draw and speak requests for these backends: the `given` style, with what it leaves open read from the
    processors themselves (a canvas the image processor keeps whole and legible; the feature extractor's window)."""
    layout = given.image_layout
    image_processor = getattr(backends["image"].processor, "image_processor", None) if "image" in backends else None
    if layout is None:
        layout = text_layout_for(image_processor) if image_processor is not None else DEFAULT_LAYOUT
    window = given.audio_window
    features = getattr(backends["audio"].processor, "feature_extractor", None) if "audio" in backends else None
    if window is None and getattr(features, "n_samples", None) and getattr(features, "sampling_rate", None):
        window = features.n_samples / features.sampling_rate
    return replace(given, image_layout=layout, audio_window=window)


def _word_list(path: Path) -> frozenset[str]:
    try:
        return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return frozenset()


def _same_weights_json(path: Path, revision: str) -> dict[str, Any] | None:
    """A JSON file measured on these exact weights (its "revision" matches), else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("revision") == revision else None


def _chosen_strengths(summary_path: Path, revision: str) -> dict[str, dict[str, float]]:
    """{mode: {media modality: α}} that `eval --strength auto` chose on calibration for each correcting mode, as
    recorded next to the weights (the demo card's eval_summary.json); empty when there is none or it was measured
    on other weights."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return {}
    if summary.get("revision") != revision:
        return {}
    regap = summary.get("regap") or {}
    chosen = {str(mode): {str(m): float(a) for m, a in per.items()}
              for mode, per in (regap.get("mode_strengths") or {}).items() if isinstance(per, dict)}
    if "adaptive" not in chosen:  # a summary written before each mode had its own α
        choice = regap.get("strength_choice") or {}
        chosen["adaptive"] = {str(m): float(a) for m, a in (choice.get("per_modality") or {}).items()}
    return {mode: per for mode, per in chosen.items() if per}


def _share_language_model(source: nn.Module, target: nn.Module) -> None:
    """Make `target` run on `source`'s language model, so one set of layers (and hooks) serves both.

    A composite model's backends are trained around the same LM weights; sharing the modules (after checking
    the weights are equal) keeps text hidden states identical whichever backend runs them.
    """
    src_decoder, dst_decoder = source.get_decoder(), target.get_decoder()
    src_state, dst_state = src_decoder.state_dict(), dst_decoder.state_dict()
    if src_state.keys() != dst_state.keys() or any(not torch.equal(src_state[k], dst_state[k]) for k in src_state):
        raise ModelLoadError("the manifest says the backends share one language model, but their weights differ")
    target.model.language_model = src_decoder
    target.lm_head = source.lm_head


def load_model(
    model_id: str,
    device: DeviceArg = "auto",
    dtype: DtypeArg = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    layers_path: str | None = None,
) -> LoadedModel:
    """Load `model_id` (a Hugging Face id, a local folder, or `demo`) ready for capture and steering.

    Args:
        model_id: hub id (e.g. "llava-hf/llava-1.5-7b-hf"), a local folder saved by `save_pretrained`, or "demo".
        device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N". Ignored with `device_map`.
        dtype: "auto" = bfloat16 on GPUs that support it, else float16; float32 on CPU.
        device_map: "auto" to spread a model larger than one GPU over several (needs accelerate).
        trust_remote_code: run code shipped with the checkpoint. Off unless you trust the source.
        layers_path: dotted path to the decoder's `nn.ModuleList` when it cannot be found automatically.
    """
    if not model_id or not model_id.strip():
        raise ModelLoadError(f"no model given; pass a Hugging Face id, a local folder, or 'demo' ({_FAMILY_LIST})")
    resolved = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved)
    folder = DEMO_MODEL_DIR if model_id == "demo" else Path(model_id)
    if model_id == "demo" and not (folder / MANIFEST_FILE).is_file():
        raise ModelLoadError(
            f"the built-in demo model is missing ({folder}); train it with `python -m explorer.demo_model.train`"
        )
    if (folder / MANIFEST_FILE).is_file():
        return _load_composite(folder, resolved, torch_dtype, device_map)
    backend, config, folder = _load_backend(model_id, resolved, torch_dtype, device_map, trust_remote_code)
    render_chat(backend, chat_messages("test", False, False), model_id)  # fail now, not mid-run
    if device_map:
        resolved = next(backend.model.parameters()).device
    # a processor that says what it accepts (the reading LM's: the readers it has) narrows its family's modalities
    accepted = getattr(backend.processor, "modalities", None) or SUPPORTED_FAMILIES.get(backend.family, ("text",))
    backends = {modality: backend for modality in accepted}
    return LoadedModel(
        name=model_id,
        backends=backends,
        layers=find_decoder_layers(backend.model, layers_path),
        hidden_size=config.get_text_config().hidden_size,
        revision=weights_revision(folder, config) if folder else (getattr(config, "_commit_hash", None) or "hub"),
        device=resolved,
        dtype=torch_dtype,
        media=media_style_for(backends),
    )
