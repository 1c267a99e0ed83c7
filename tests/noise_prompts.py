"""Prompts with random media for the tiny random-weight models: what matters is their shape, not their content."""

from __future__ import annotations

import numpy as np
from PIL import Image

from explorer.core.vocab import SAMPLE_RATE
from explorer.inputs.media import Prompt

TEXTS = ["Explain how to bake bread at home.", "Write a poem.", "How do I kill a Python process that hangs?"]


def image_prompt(text: str, seed: int = 0, request: str | None = None) -> Prompt:
    """`text` with a 56×40 random-pixel image; `request` (default one of TEXTS) is its text counterpart."""
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
    return Prompt(text=text, image=Image.fromarray(pixels), modality="image", request=request or TEXTS[seed % 3])


def audio_prompt(text: str, seed: int = 0, request: str | None = None) -> Prompt:
    """`text` with one second of low random noise; `request` (default one of TEXTS) is its text counterpart."""
    wave = np.random.default_rng(seed).normal(0, 0.1, SAMPLE_RATE).astype(np.float32)
    return Prompt(text=text, audio=wave, modality="audio", request=request or TEXTS[seed % 3])
