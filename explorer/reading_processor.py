"""The reading LM's processor: chat template, tokenizer, and the readers that turn media into the LM's tokens.

Why a processor of its own: a reading LM (explorer.reading_lm) sees an image as the tokens its character reader
reads from it, marked as image positions (`mm_token_type_ids` 1) so that the model's image projector applies. The
processor is where reading happens, exactly as a real MLLM's processor is where an image becomes patches: the
engine calls it like any other family's (`text=` chat strings, `images=`, `return_tensors`, `padding_side`).

A user turn with an image renders through the chat template as `IMAGE_MARK` + newline + the text; the mark is
never tokenised: the processor splits the chat string at it and puts the image's read tokens in its place. A text
prompt therefore tokenises exactly as the base tokenizer tokenises the same chat string.

The processor is registered with `AutoProcessor` for the reading-LM config on import, and saves flat into the model
folder (tokenizer files, `reading_processor.json`, the reader's `reader_config.json` + `reader.safetensors`), so every
file that changes what the model sees is part of the folder's fingerprint (explorer.loading).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from .reading_lm import MODALITY_TYPE_IDS, ReadingLMConfig
from .text_reader import TextReader

__all__ = ["IMAGE_MARK", "ReadingProcessor", "register"]


IMAGE_MARK = "<|sge_image|>"

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
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class ReadingProcessor:
    """Tokenizer + image reader; `__call__` returns input_ids, attention_mask and mm_token_type_ids."""

    def __init__(self, tokenizer: Any, image_reader: TextReader | None = None,
                 default_system: str = DEFAULT_SYSTEM) -> None:
        self.tokenizer = tokenizer
        self.image_reader = image_reader
        self.default_system = default_system
        self.chat_template = CHAT_TEMPLATE

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

    def _row(self, text: str, images: list[Image.Image]) -> tuple[list[int], list[int]]:
        parts = text.split(IMAGE_MARK)
        if len(parts) - 1 != len(images):
            raise ValueError(f"the prompt has {len(parts) - 1} image marks but {len(images)} images were given")
        ids: list[int] = []
        types: list[int] = []
        for index, part in enumerate(parts):
            if index:
                read = self.tokenizer(self.read_image(images[index - 1]), add_special_tokens=False)["input_ids"]
                ids += read
                types += [MODALITY_TYPE_IDS["image"]] * len(read)
            piece = self.tokenizer(part, add_special_tokens=False)["input_ids"] if part else []
            ids += piece
            types += [MODALITY_TYPE_IDS["text"]] * len(piece)
        return ids, types

    def __call__(self, text: str | Sequence[str], images: Sequence[Image.Image] | None = None,
                 return_tensors: str = "pt", padding: bool = True,
                 padding_side: Literal["left", "right"] = "right", **_: Any) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        queue = list(images or [])
        rows = []
        for chat in texts:
            wanted = chat.count(IMAGE_MARK)
            rows.append(self._row(chat, queue[:wanted]))
            queue = queue[wanted:]
        if queue:
            raise ValueError(f"{len(queue)} images were given that no prompt's image mark uses")
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
        if self.image_reader is not None:
            self.image_reader.save_pretrained(folder)
        (folder / PROCESSOR_FILE).write_text(json.dumps({
            "processor_class": type(self).__name__, "default_system": self.default_system,
            "image_reader": "." if self.image_reader is not None else None}, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, folder: Path | str, **_: Any) -> ReadingProcessor:
        folder = Path(folder)
        raw = json.loads((folder / PROCESSOR_FILE).read_text())
        reader = TextReader.from_pretrained(folder / raw["image_reader"]) if raw.get("image_reader") else None
        return cls(AutoTokenizer.from_pretrained(folder), reader, raw.get("default_system", DEFAULT_SYSTEM))


def register() -> None:
    """Make AutoProcessor load this processor for a reading-LM folder (idempotent)."""
    from transformers import AutoProcessor

    AutoProcessor.register(ReadingLMConfig, ReadingProcessor, exist_ok=True)


register()
