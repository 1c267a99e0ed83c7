"""Load a multimodal LLM (or the built-in demo) and turn prompts into model inputs.

One `LoadedModel` serves every family: a backend (model + processor) per input modality, and the one list of
decoder layers that every backend runs through, found generically (`get_decoder().layers`, else a module-name
search, with an override). Inputs always go through the processor's own chat template, so a prompt is rendered
exactly as the model saw it in training.

>>> lm = load_model("demo")                                   # doctest: +SKIP
>>> inputs = lm.encode([render("How do I bake bread?", "text")])  # doctest: +SKIP
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

from .data import Modality
from .render import DEFAULT_LAYOUT, DEMO_LAYOUT, GridLayout, Prompt

__all__ = [
    "ASSETS_DIR",
    "DEMO_MODEL_DIR",
    "SUPPORTED_FAMILIES",
    "Backend",
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "resolve_device",
    "demo_revision",
    "manifest_layout",
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
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
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
    is_demo: bool = False
    image_layout: GridLayout = DEFAULT_LAYOUT
    audio_style: Literal["sentence", "slots"] = "sentence"
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
        index = layer + self.num_layers if layer < 0 else layer
        if not 0 <= index < self.num_layers:
            raise ValueError(f"layer {layer} out of range for a model with {self.num_layers} layers")
        return index

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
            kwargs["sampling_rate"] = 16000
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


def _load_demo(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    manifest_path = DEMO_MODEL_DIR / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(
            f"the built-in demo model is missing ({manifest_path}); train it with `python -m explorer.demo_model.train`"
        )
    manifest = json.loads(manifest_path.read_text())
    if float(manifest.get("slot_seconds", 0.4)) != 0.4:
        raise ModelLoadError(f"the demo model expects {manifest['slot_seconds']} s word slots; the renderer speaks 0.4 s")
    loaded: dict[str, Backend] = {}
    for folder in sorted({manifest["image"], manifest["audio"]}):
        loaded[folder], _, _ = _load_backend(str(DEMO_MODEL_DIR / folder), device, dtype, None, False)
    image, audio = loaded[manifest["image"]], loaded[manifest["audio"]]
    _share_language_model(source=image.model, target=audio.model)
    backends: dict[Modality, Backend] = {"text": loaded[manifest["text"]], "image": image, "audio": audio}
    layers = find_decoder_layers(image.model)
    text_config = image.model.config.get_text_config()
    revision = demo_revision(DEMO_MODEL_DIR, manifest, image.model.config, audio.model.config)
    return LoadedModel(
        name="demo",
        backends=backends,
        layers=layers,
        hidden_size=text_config.hidden_size,
        revision=revision,
        device=device,
        dtype=dtype,
        is_demo=True,
        image_layout=manifest_layout(manifest),
        audio_style=manifest.get("audio_style", "slots"),
        suggested_strengths=_chosen_strengths(DEMO_MODEL_DIR / "eval_summary.json", revision),
    )


def _chosen_strengths(summary_path: Path, revision: str) -> dict[str, float]:
    """α_max per media modality that `eval --strength auto` chose on the calibration split, as the demo card
    recorded it (eval_summary.json); empty when there is none or it was measured on other weights."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return {}
    if summary.get("revision") != revision:
        return {}
    choice = (summary.get("regap") or {}).get("strength_choice") or {}
    return {str(m): float(a) for m, a in (choice.get("per_modality") or {}).items()}


def demo_revision(folder: Path, manifest: dict, image_config: Any, audio_config: Any) -> str:
    """The demo model's revision: its image weights' fingerprint, then the first 8 hex of its audio weights'."""
    return _revision(folder / manifest["image"], image_config) + _revision(folder / manifest["audio"], audio_config)[:8]


def manifest_layout(manifest: dict) -> GridLayout:
    """The word grid the demo model was trained on (stored in its manifest; "demo" = the current default)."""
    layout = manifest.get("image_layout", "demo")
    if layout == "demo":
        return DEMO_LAYOUT
    try:
        return GridLayout(**layout)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"the demo model's manifest has an invalid image_layout {layout!r}: {err}") from err


def _share_language_model(source: nn.Module, target: nn.Module) -> None:
    """Make `target` run on `source`'s language model, so one set of layers (and hooks) serves both.

    The demo's image and audio models are trained around the same LM weights; sharing the modules (after
    checking the weights are equal) keeps text hidden states identical whichever backend runs them.
    """
    src_decoder, dst_decoder = source.get_decoder(), target.get_decoder()
    src_state, dst_state = src_decoder.state_dict(), dst_decoder.state_dict()
    if src_state.keys() != dst_state.keys() or any(not torch.equal(src_state[k], dst_state[k]) for k in src_state):
        raise ModelLoadError("the demo's image and audio models do not share language-model weights; retrain it")
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
    if model_id == "demo":
        return _load_demo(resolved, torch_dtype)
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
