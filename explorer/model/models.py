"""A loaded multimodal LLM and how to turn prompts into its inputs.

One `LoadedModel` serves every family: a backend (model + processor) per input modality, and the one list of
decoder layers that every backend runs through. Inputs always go through the processor's own chat template, so
a prompt is rendered exactly as the model saw it in training; `LoadedModel.render` draws a request the way this
model wants it (`MediaStyle`). How a model is found and loaded (hub ids, folders, composite folders such as the
built-in demo) is `explorer.model.loading`.

>>> lm = explorer.model.loading.load_model("demo")                  # doctest: +SKIP
>>> inputs = lm.encode([lm.render("How do I bake bread?", "text")])  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from explorer.core.vocab import SAMPLE_RATE, Modality, normalise_layer
from explorer.inputs.data import Instruction
from explorer.inputs.media import (
    DEFAULT_LAYOUT,
    AudioStyle,
    ImageLayout,
    Prompt,
    prompt_words,
    render,
    vocabulary_form,
)
from explorer.inputs.uploads import check_audio_length

__all__ = ["SUPPORTED_FAMILIES", "Backend", "LoadedModel", "MediaStyle", "ModelLoadError", "chat_messages", "render_chat"]


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
    "sge_reading_lm": ("text", "image", "audio"),  # this project's reading LM (explorer.model.reading_lm): the demo's family
}


#: Processors that want one list of images per sample rather than a flat list.
_NESTED_IMAGES = {"idefics3", "smolvlm", "gemma3"}
#: Families whose model reads audio features only where the feature attention mask is 1 (Qwen2.5-Omni's
#: `get_audio_features` selects those frames before its audio tower), so padding every clip to the feature
#: extractor's whole window (300 s, 4.8 M samples, for Omni) changes nothing the model sees. Qwen2-Audio is not
#: here: its encoder expects the full 3,000-frame window.
_MASKED_AUDIO = {"qwen2_5_omni"}


class ModelLoadError(ValueError):
    """A model could not be loaded or used; the message names the problem and how to fix it."""


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
    """How a model wants requests drawn and spoken: the layout of its images (wrapped lines on a canvas its
    processor keeps whole, or the demo's word grid), the style of its speech ("sentence": natural speech; "slots":
    one word per `slot_seconds`, the word-aligned audio the demo hears) and how many seconds of audio it hears
    (`audio_window`, None when unknown): longer speech is refused rather than cut."""

    image_layout: ImageLayout | None = DEFAULT_LAYOUT  # None only in a manifest: "from the processor"
    audio_style: AudioStyle = "sentence"
    slot_seconds: float = 0.4
    audio_window: float | None = None


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
    # {mode: {media modality: α}} chosen on calibration for these exact weights, each correcting mode on its own
    # (demo: eval_summary.json)
    suggested_strengths: dict[str, dict[str, float]] = field(default_factory=dict)
    # where `--calibration default` calibrates: "builtin", or "validation" for a model trained on the calibration
    # split (the demo), so its defaults are chosen on data it never saw
    calibration_source: str = "builtin"
    # word forms of the training text, when the folder lists them (the demo): other words were never seen
    vocabulary: frozenset[str] = frozenset()
    # held-out requests the model reads, with the measured story per request (the demo's gallery.json)
    gallery: dict[str, Any] | None = None
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

    def unseen_words(self, text: str) -> list[str]:
        """Words of `text` outside the model's listed training vocabulary (none when it lists no vocabulary)."""
        if not self.vocabulary:
            return []
        try:
            words = prompt_words(text)
        except ValueError:  # no words at all
            return []
        return list(dict.fromkeys(w for w in words if vocabulary_form(w) not in self.vocabulary))

    def render(self, item: Instruction | str, modality: Modality) -> Prompt:
        """The request as this model should see it in `modality` (its own grid and speech style)."""
        media = self.media
        return render(item, modality, image_layout=media.image_layout, audio_style=media.audio_style,
                      slot_seconds=media.slot_seconds, audio_window=media.audio_window)

    def chat_text(self, prompt: Prompt) -> str:
        """The prompt rendered through the processor's chat template, generation prompt appended."""
        backend = self.backend(prompt.modality)
        messages = chat_messages(prompt.text, prompt.image is not None, prompt.audio is not None)
        return render_chat(backend, messages, self.name)

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
            for prompt in prompts:  # too short a clip fails deep inside some families (Qwen2-Audio); say so here
                check_audio_length(len(prompt.audio) / SAMPLE_RATE)
            kwargs["audio"] = [p.audio for p in prompts]
            kwargs["sampling_rate"] = SAMPLE_RATE
            if backend.family in _MASKED_AUDIO:
                longest = max(len(p.audio) for p in prompts)
                kwargs["audio_kwargs"] = {"max_length": masked_audio_length(backend.processor.feature_extractor,
                                                                            longest)}
        with self._encode_lock:  # processors keep per-call state in a few families; serialise only this step
            inputs = backend.processor(**kwargs)
        return inputs.to(self.device)

    def trailing_template_tokens(self, modality: Modality) -> int:
        """How many chat-template tokens follow the user's content (e.g. `<|im_end|>\\n<|im_start|>assistant\\n`)."""
        if modality not in self._template_tokens:
            marker = "\u2063SGE-END\u2063"
            messages = chat_messages(marker, modality == "image", modality == "audio")
            full = render_chat(self.backend(modality), messages, self.name)
            suffix = full.split(marker, 1)[1]
            ids = self.backend(modality).tokenizer(suffix, add_special_tokens=False)["input_ids"]
            self._template_tokens[modality] = max(1, len(ids))
        return self._template_tokens[modality]

    def decode(self, modality: Modality, token_ids: Sequence[int]) -> str:
        return self.backend(modality).tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()


def masked_audio_length(feature_extractor: Any, longest: int) -> int:
    """The samples to pad a batch of clips to when the model reads only the masked frames: the longest clip plus
    one STFT window (the last real frames' windows and the centre padding then see zeros, as they do in the whole
    window), rounded up to a whole second, never more than the extractor's own window.

    Why: Qwen2.5-Omni's processor pads every clip to 300 s and computes its log-mel over all of it: 0.25 s of CPU
    and 19 MB per clip however short, the slowest step of an audio request. The real frames come out bit for bit
    the same (tests/test_capture_omni.py checks features and hidden states against the whole window).
    """
    rate = int(feature_extractor.sampling_rate)
    needed = -(-(longest + int(feature_extractor.n_fft)) // rate) * rate
    return min(int(feature_extractor.n_samples), needed)


def chat_messages(text: str, has_image: bool, has_audio: bool) -> list[dict[str, Any]]:
    """The one conversation shape every family's chat template receives."""
    content: list[dict[str, Any]] = []
    if has_image:
        content.append({"type": "image"})
    if has_audio:
        content.append({"type": "audio"})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def render_chat(backend: Backend, messages: list[dict[str, Any]], name: str) -> str:
    """`messages` through the backend's chat template (the processor's, else the tokenizer's), generation prompt
    appended; a checkpoint without a template is a ModelLoadError, since its prompts cannot be formatted as trained."""
    template = getattr(backend.processor, "chat_template", None) or getattr(backend.tokenizer, "chat_template", None)
    if not template:
        raise ModelLoadError(
            f"{name} has no chat template, so prompts cannot be formatted the way it was trained; "
            "use an instruction-tuned checkpoint (one whose processor or tokenizer carries chat_template)"
        )
    owner = backend.processor if getattr(backend.processor, "chat_template", None) else backend.tokenizer
    return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
