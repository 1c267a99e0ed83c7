"""The reading LM's processor: chat template, tokenizer, and the readers that turn media into the LM's tokens.

Why a processor of its own: a reading LM (explorer.model.reading_lm) sees an image as the tokens its character reader
reads from it, marked as image positions (`mm_token_type_ids` 1) so that the model's image projector applies, and
hears a spoken request as the words its speech reader (explorer.model.speech_reader) hears, marked as audio (2). The
processor is where reading happens, exactly as a real MLLM's processor is where an image becomes patches: the
engine calls it like any other family's (`text=` chat strings, `images=`, `return_tensors`, `padding_side`).

A user turn with an image (audio) renders through the chat template as `IMAGE_MARK` (`AUDIO_MARK`) + newline + the
text; a mark is never tokenised: the processor splits the chat string at it and puts the read tokens in its place. A text
prompt therefore tokenises exactly as the base tokenizer tokenises the same chat string.

**What is marked: the medium and everything after it.** `mm_token_type_ids` marks the read tokens *and every prompt
position after them* (the carrier sentence, the chat template's closing tokens) with the medium's type, so the
model's projector shifts all of them. Why: in a real MLLM every token after an image attends to it and carries its
imprint, and the paper measures the drift at the last prompt token; a toy whose drift sat on the read tokens alone
put its modality cue where a last-token drift cannot reach (measured: collapse 2 in docs/demo-build.md, where
subtracting that drift at α 1, 2, 4 or 6 repaired at most 4 of 20 harmful images). Generated tokens are text (0).

The processor is registered with `AutoProcessor` for the reading-LM config on import, and saves flat into the model
folder (tokenizer files, `reading_processor.json`, the reader's `reader_config.json` + `reader.safetensors`), so every
file that changes what the model sees is part of the folder's fingerprint (explorer.model.loading).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from explorer.core.vocab import SAMPLE_RATE
from explorer.model.reading_lm import MODALITY_TYPE_IDS, ReadingLMConfig
from explorer.model.speech_reader import SpeechReader
from explorer.model.text_reader import TextReader

__all__ = ["AUDIO_MARK", "IMAGE_MARK", "ReadingProcessor", "register"]


IMAGE_MARK = "<|sge_image|>"
AUDIO_MARK = "<|sge_audio|>"
_MARKS = re.compile(f"({re.escape(IMAGE_MARK)}|{re.escape(AUDIO_MARK)})")

PROCESSOR_FILE = "reading_processor.json"

#: ChatML, as SmolLM2-Instruct's own template (its default system line when none is given), with media parts drawn
#: as marks.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n{{ default_system }}<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_MARK + "\n"
    "{% elif part['type'] == 'audio' %}" + AUDIO_MARK + "\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class ReadingProcessor:
    """Tokenizer + image and speech readers; `__call__` returns input_ids, attention_mask and mm_token_type_ids."""

    def __init__(self, tokenizer: Any, image_reader: TextReader | None = None,
                 default_system: str = DEFAULT_SYSTEM, speech_reader: SpeechReader | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_reader = image_reader
        self.speech_reader = speech_reader
        self.default_system = default_system
        self.chat_template = CHAT_TEMPLATE

    @property
    def modalities(self) -> tuple[str, ...]:
        """What this processor accepts: text, and each medium it has a reader for."""
        return ("text",) + ("image",) * (self.image_reader is not None) + ("audio",) * (self.speech_reader is not None)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str:
        if tokenize:
            raise ValueError("ReadingProcessor.apply_chat_template renders text only; call the processor for ids")
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  default_system=self.default_system)

    def read_image(self, image: Image.Image) -> str:
        """What the model reads from `image` (shown by the app as "what the model read")."""
        if self.image_reader is None:
            raise ValueError("this reading LM has no image reader, so it does not accept images")
        return self.image_reader.read(image)

    def read_audio(self, audio: np.ndarray) -> str:
        """What the model hears in `audio` (16 kHz mono)."""
        if self.speech_reader is None:
            raise ValueError("this reading LM has no speech reader, so it does not accept audio")
        return self.speech_reader.read(audio)

    def _row(self, text: str, images: list[Image.Image], audio: list[np.ndarray]) -> tuple[list[int], list[int]]:
        """One prompt's ids and marks: every position from a medium's read tokens to the end of the prompt (or the
        next medium) carries that medium's mark (module docstring: the medium conditions what follows it)."""
        ids: list[int] = []
        types: list[int] = []
        conditioned_on = MODALITY_TYPE_IDS["text"]
        for part in _MARKS.split(text):
            if part in (IMAGE_MARK, AUDIO_MARK):
                image = part == IMAGE_MARK
                read = self.read_image(images.pop(0)) if image else self.read_audio(audio.pop(0))
                piece = self.tokenizer(read, add_special_tokens=False)["input_ids"]
                conditioned_on = MODALITY_TYPE_IDS["image" if image else "audio"]
            elif part:
                piece = self.tokenizer(part, add_special_tokens=False)["input_ids"]
            else:
                continue
            ids += piece
            types += [conditioned_on] * len(piece)
        return ids, types

    def __call__(self, text: str | Sequence[str], images: Sequence[Image.Image] | None = None,
                 audio: Sequence[np.ndarray] | None = None, sampling_rate: int | None = None,
                 return_tensors: str = "pt", padding: bool = True,
                 padding_side: Literal["left", "right"] = "right", **_: Any) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        if audio is not None and sampling_rate not in (None, SAMPLE_RATE):
            raise ValueError(f"the speech reader hears {SAMPLE_RATE} Hz audio, got sampling_rate={sampling_rate}")
        marks = {mark: sum(chat.count(mark) for chat in texts) for mark in (IMAGE_MARK, AUDIO_MARK)}
        given = {IMAGE_MARK: len(images or []), AUDIO_MARK: len(audio or [])}
        for mark, kind in ((IMAGE_MARK, "image"), (AUDIO_MARK, "audio clip")):
            if marks[mark] != given[mark]:
                raise ValueError(f"the prompts have {marks[mark]} {kind} marks but {given[mark]} {kind}s were given")
        image_queue, audio_queue = list(images or []), list(audio or [])
        rows = [self._row(chat, image_queue, audio_queue) for chat in texts]
        width = max(len(ids) for ids, _ in rows)
        if not padding and any(len(ids) != width for ids, _ in rows):
            raise ValueError("prompts of different lengths need padding=True")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "mm_token_type_ids": []}
        def place(values: list[int], filler: int) -> list[int]:
            fill = [filler] * (width - len(values))
            return fill + values if padding_side == "left" else values + fill

        for ids, types in rows:
            batch["input_ids"].append(place(ids, pad))
            batch["attention_mask"].append(place([1] * len(ids), 0))
            batch["mm_token_type_ids"].append(place(types, 0))
        return BatchFeature({k: torch.tensor(v) for k, v in batch.items()}, tensor_type=None)

    def save_pretrained(self, folder: Path | str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        for reader in (self.image_reader, self.speech_reader):
            if reader is not None:
                reader.save_pretrained(folder)
        (folder / PROCESSOR_FILE).write_text(json.dumps({
            "processor_class": type(self).__name__, "default_system": self.default_system,
            "image_reader": "." if self.image_reader is not None else None,
            "speech_reader": "." if self.speech_reader is not None else None}, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, folder: Path | str, **_: Any) -> ReadingProcessor:
        folder = Path(folder)
        raw = json.loads((folder / PROCESSOR_FILE).read_text())
        image = TextReader.from_pretrained(folder / raw["image_reader"]) if raw.get("image_reader") else None
        speech = SpeechReader.from_pretrained(folder / raw["speech_reader"]) if raw.get("speech_reader") else None
        return cls(AutoTokenizer.from_pretrained(folder), image, raw.get("default_system", DEFAULT_SYSTEM), speech)


def register() -> None:
    """Make AutoProcessor load this processor for a reading-LM folder (idempotent)."""
    from transformers import AutoProcessor

    AutoProcessor.register(ReadingLMConfig, ReadingProcessor, exist_ok=True)


register()
