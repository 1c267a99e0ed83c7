"""Load a multimodal LLM (or the built-in demo) and turn prompts into model inputs.

One `LoadedModel` serves every family: a backend (model + processor) per input modality, and the one list of
decoder layers that every backend runs through, found generically (`get_decoder().layers`, else a module-name
search, with an override). Inputs always go through the processor's own chat template, so a prompt is rendered
exactly as the model saw it in training. A folder with a `manifest.json` (the built-in demo is one) is a
composite model: the manifest names a backend folder per modality and how to draw media for it (`Manifest`).

>>> lm = load_model("demo")                                   # doctest: +SKIP
>>> inputs = lm.encode([lm.render("How do I bake bread?", "text")])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from .data import Instruction
from .media import DEFAULT_LAYOUT, AudioStyle, GridLayout, Prompt, render
from .vocab import MODALITIES, SAMPLE_RATE, Modality, normalise_layer

__all__ = [
    "ASSETS_DIR",
    "DEMO_MODEL_DIR",
    "SUPPORTED_FAMILIES",
    "Backend",
    "LoadedModel",
    "Manifest",
    "MediaStyle",
    "ModelLoadError",
    "folder_revision",
    "load_model",
    "resolve_device",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODEL_DIR = ASSETS_DIR / "demo_model"

#: model_type (config.json) → the modalities its processor accepts besides text.
SUPPORTED_FAMILIES: dict[str, tuple[Modality, ...]] = {
    "llava": ("text", "image"),
    "llava_next": ("text", "image"),
    "qwen2_vl": ("text", "image"),
    "qwen2_5_vl": ("text", "image"),
    "gemma3": ("text", "image"),
    "idefics3": ("text", "image"),
    "smolvlm": ("text", "image"),
    "qwen2_audio": ("text", "audio"),
    "qwen2_5_omni": ("text", "image", "audio"),
}
_FAMILY_LIST = ", ".join(sorted(SUPPORTED_FAMILIES)) + ", and 'demo'"
#: Processors that want one list of images per sample rather than a flat list.
_NESTED_IMAGES = {"idefics3", "smolvlm", "gemma3"}

DeviceArg = Literal["auto", "cpu", "cuda"] | str
DtypeArg = Literal["auto", "float32", "bfloat16", "float16"]


class ModelLoadError(ValueError):
    """A model could not be loaded or used; the message names the problem and how to fix it."""


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


def _resolve_dtype(dtype: DtypeArg, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # bf16 where the GPU has it (Ampere and later), fp16 on older GPUs, fp32 on a CPU
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        raise ModelLoadError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(allowed)}")
    return allowed[dtype]


@dataclass
class Backend:
    """The model and processor that handle one input modality."""

    model: nn.Module
    processor: Any
    family: str

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


@dataclass(frozen=True)
class MediaStyle:
    """How a model wants requests drawn and spoken: the word grid of its images and the style of its speech
    ("sentence": natural speech; "slots": one word per `slot_seconds`, the word-aligned audio the demo hears)."""

    image_layout: GridLayout = DEFAULT_LAYOUT
    audio_style: AudioStyle = "sentence"
    slot_seconds: float = 0.4


@dataclass
class LoadedModel:
    """A loaded model: its backends, its decoder layers, and how to build its inputs."""

    name: str
    backends: dict[Modality, Backend]
    layers: nn.ModuleList
    hidden_size: int
    revision: str
    device: torch.device
    dtype: torch.dtype
    media: MediaStyle = MediaStyle()
    # Markdown shown wherever the model is named (the demo: "a toy trained in-house"), and its model card
    notice: str = ""
    card: Path | None = None
    # α_max per media modality chosen on the calibration split for these exact weights (demo: eval_summary.json)
    suggested_strengths: dict[str, float] = field(default_factory=dict)
    _template_tokens: dict[Modality, int] = field(default_factory=dict, repr=False)
    _encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return tuple(self.backends)

    def backend(self, modality: Modality) -> Backend:
        """The backend for `modality`, or a clear error naming what this model accepts."""
        if modality not in self.backends:
            raise ModelLoadError(
                f"{self.name} does not accept {modality} input; it accepts: {', '.join(self.modalities)}"
            )
        return self.backends[modality]

    def layer_index(self, layer: int) -> int:
        """Normalise a possibly negative layer index and check its range."""
        return normalise_layer(layer, self.num_layers)

    def render(self, item: Instruction | str, modality: Modality) -> Prompt:
        """The request as this model should see it in `modality` (its own grid and speech style)."""
        media = self.media
        return render(item, modality, image_layout=media.image_layout, audio_style=media.audio_style,
                      slot_seconds=media.slot_seconds)

    def chat_text(self, prompt: Prompt) -> str:
        """The prompt rendered through the processor's chat template, generation prompt appended."""
        backend = self.backend(prompt.modality)
        return _apply_template(backend, _messages(prompt.text, prompt.image is not None, prompt.audio is not None), self.name)

    def encode(self, prompts: Sequence[Prompt], padding_side: Literal["left", "right"] = "right") -> Any:
        """Processor outputs (on the model's device) for prompts that share one modality.

        Right padding keeps every real token at the same position it has unbatched (used for capture);
        generation uses left padding so all rows end at the last prompt token.
        """
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        modality = prompts[0].modality
        if any(p.modality != modality for p in prompts):
            raise ValueError("encode() takes prompts of one modality at a time")
        backend = self.backend(modality)
        kwargs: dict[str, Any] = {
            "text": [self.chat_text(p) for p in prompts],
            "return_tensors": "pt",
            "padding": True,
            "padding_side": padding_side,
        }
        if modality == "image":
            images = [p.image for p in prompts]
            kwargs["images"] = [[im] for im in images] if backend.family in _NESTED_IMAGES else images
        if modality == "audio":
            kwargs["audio"] = [p.audio for p in prompts]
            kwargs["sampling_rate"] = SAMPLE_RATE
        with self._encode_lock:  # processors keep per-call state in a few families; serialise only this step
            inputs = backend.processor(**kwargs)
        return inputs.to(self.device)

    def trailing_template_tokens(self, modality: Modality) -> int:
        """How many chat-template tokens follow the user's content (e.g. `<|im_end|>\\n<|im_start|>assistant\\n`)."""
        if modality not in self._template_tokens:
            marker = "\u2063SGE-END\u2063"
            messages = _messages(marker, modality == "image", modality == "audio")
            full = _apply_template(self.backend(modality), messages, self.name)
            suffix = full.split(marker, 1)[1]
            ids = self.backend(modality).tokenizer(suffix, add_special_tokens=False)["input_ids"]
            self._template_tokens[modality] = max(1, len(ids))
        return self._template_tokens[modality]

    def decode(self, modality: Modality, token_ids: Sequence[int]) -> str:
        return self.backend(modality).tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()


def _messages(text: str, has_image: bool, has_audio: bool) -> list[dict[str, Any]]:
    """The one conversation shape every family's chat template receives."""
    content: list[dict[str, Any]] = []
    if has_image:
        content.append({"type": "image"})
    if has_audio:
        content.append({"type": "audio"})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def _apply_template(backend: Backend, messages: list[dict[str, Any]], name: str) -> str:
    template = getattr(backend.processor, "chat_template", None) or getattr(backend.tokenizer, "chat_template", None)
    if not template:
        raise ModelLoadError(
            f"{name} has no chat template, so prompts cannot be formatted the way it was trained; "
            "use an instruction-tuned checkpoint (one whose processor or tokenizer carries chat_template)"
        )
    owner = backend.processor if getattr(backend.processor, "chat_template", None) else backend.tokenizer
    return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


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


def _revision(folder: Path, config: Any) -> str:
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


def _load_backend(
    source: str, device: torch.device, dtype: torch.dtype, device_map: str | None, trust_remote_code: bool
) -> tuple[Backend, Any, Path | None]:
    from transformers import AutoConfig, AutoModelForMultimodalLM, AutoProcessor

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
            model = AutoModelForMultimodalLM.from_pretrained(source, **kwargs)
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


MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "explorer-model/1"


@dataclass(frozen=True)
class Manifest:
    """A composite model folder: one sub-folder per modality's backend, and how to draw media for it.

    Why: a model assembled from parts (the built-in demo: an image model and an audio model trained around one
    language model) is described by data in its folder, so one loader serves it and every other model, and
    nothing downstream asks "is this the demo?". Fields of manifest.json: `format`, `backends` (modality →
    sub-folder), `shared_language_model` (the backends run one LM, checked equal and then shared in memory so
    one set of hooks serves all), `media` (`image_layout` grid, `audio_style`, `slot_seconds`), and optional
    `notice` (Markdown shown with the model), `card` (its model card, relative path) and `strengths_from` (a
    JSON with the α_max per modality chosen on calibration for these exact weights).
    """

    folder: Path
    backends: dict[Modality, str]
    shared_language_model: bool
    media: MediaStyle
    notice: str = ""
    card: str | None = None
    strengths_from: str | None = None

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            backends = {m: str(raw["backends"][m]) for m in MODALITIES if m in raw["backends"]}
            if "text" not in backends:
                raise ValueError("backends needs a 'text' entry")
            media = raw.get("media", {})
            style = MediaStyle(
                image_layout=GridLayout(**media["image_layout"]) if "image_layout" in media else DEFAULT_LAYOUT,
                audio_style=media.get("audio_style", "sentence"),
                slot_seconds=float(media.get("slot_seconds", 0.4)),
            )
            return cls(folder, backends, bool(raw.get("shared_language_model", False)), style,
                       str(raw.get("notice", "")), raw.get("card"), raw.get("strengths_from"))
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{path} is not a valid model manifest: {type(err).__name__}: {err}") from err

    def distinct_folders(self) -> list[Path]:
        """Backend folders in modality order, each once (the text backend's first)."""
        return [self.folder / name for name in dict.fromkeys(self.backends.values())]


def folder_revision(folder: Path) -> str:
    """The revision of a local model folder: a plain model's weight fingerprint; for a composite folder the
    first backend's fingerprint followed by the first 8 hex digits of each further backend's."""
    from transformers import AutoConfig

    if not (folder / MANIFEST_FILE).is_file():
        return _revision(folder, AutoConfig.from_pretrained(folder))
    parts = [_revision(sub, AutoConfig.from_pretrained(sub)) for sub in Manifest.read(folder).distinct_folders()]
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
        name=folder.name if folder != DEMO_MODEL_DIR else "demo",
        backends=backends,
        layers=find_decoder_layers(first.model),
        hidden_size=first.model.config.get_text_config().hidden_size,
        revision=revision,
        device=next(first.model.parameters()).device,
        dtype=dtype,
        media=manifest.media,
        notice=manifest.notice,
        card=folder / manifest.card if manifest.card else None,
        suggested_strengths=_chosen_strengths(folder / manifest.strengths_from, revision)
        if manifest.strengths_from else {},
    )


def _chosen_strengths(summary_path: Path, revision: str) -> dict[str, float]:
    """α_max per media modality that `eval --strength auto` chose on the calibration split, as recorded next to
    the weights (the demo card's eval_summary.json); empty when there is none or it was measured on other weights."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return {}
    if summary.get("revision") != revision:
        return {}
    choice = (summary.get("regap") or {}).get("strength_choice") or {}
    return {str(m): float(a) for m, a in (choice.get("per_modality") or {}).items()}


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
        dtype: "auto" = bfloat16 on GPU, float32 on CPU.
        device_map: "auto" to spread a model larger than one GPU over several (needs accelerate).
        trust_remote_code: run code shipped with the checkpoint. Off unless you trust the source.
        layers_path: dotted path to the decoder's `nn.ModuleList` when it cannot be found automatically.
    """
    if not model_id or not model_id.strip():
        raise ModelLoadError(f"no model given; pass a Hugging Face id, a local folder, or 'demo' ({_FAMILY_LIST})")
    resolved = resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, resolved)
    folder = DEMO_MODEL_DIR if model_id == "demo" else Path(model_id)
    if model_id == "demo" and not (folder / MANIFEST_FILE).is_file():
        raise ModelLoadError(
            f"the built-in demo model is missing ({folder}); train it with `python -m explorer.demo_model.train`"
        )
    if (folder / MANIFEST_FILE).is_file():
        return _load_composite(folder, resolved, torch_dtype, device_map)
    backend, config, folder = _load_backend(model_id, resolved, torch_dtype, device_map, trust_remote_code)
    _apply_template(backend, _messages("test", False, False), model_id)  # fail now, not mid-run
    if device_map:
        resolved = next(backend.model.parameters()).device
    backends = {modality: backend for modality in SUPPORTED_FAMILIES.get(backend.family, ("text",))}
    return LoadedModel(
        name=model_id,
        backends=backends,
        layers=find_decoder_layers(backend.model, layers_path),
        hidden_size=config.get_text_config().hidden_size,
        revision=_revision(folder, config) if folder else (getattr(config, "_commit_hash", None) or "hub"),
        device=resolved,
        dtype=torch_dtype,
    )
