"""Train the reading LM's character reader (explorer.model.text_reader) on lines the project's own renderer draws.

Why rendered lines: the demo's images are drawn by explorer.inputs.typography, so the reader learns exactly the pictures
the app shows, at several font sizes so that a user's own screenshot at another size still reads. The text is the
in-house training text (explorer.demo_model.training_text) plus random character strings, so every printable
character is seen; no development or evaluation sentence is drawn for training.

    python -m explorer.demo_model.reader_train --out build/demo_next/image_reader
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.inputs.typography import TextLayout, fitted_lines, render_text_image
from explorer.model.model_view import ink_lines
from explorer.model.text_reader import (
    CHARSET,
    ReaderConfig,
    TextReader,
    line_pixels,
    stack_lines,
)

from .ctc_training import CTCBatch, train_ctc
from .training_text import text_training_set

__all__ = ["READER_CONFIG", "READER_LAYOUT", "TRAINING_FONT_SIZES", "reading_accuracy", "rendered_lines", "train_text_reader"]


#: The demo's image layout: one font size, wrapped on a 448 px wide canvas (about 45 characters a line).
READER_LAYOUT = TextLayout(width=448, height=224, font_size=16, min_font_size=16, margin=8)

#: Font sizes the reader trains on (the layout's size among them).
TRAINING_FONT_SIZES = (13, 16, 20, 24)

#: Lines scaled to 24 px: about three output columns a character, so CTC has a column for the blank between two
#: equal letters ("attack"; at 16 px, two columns a character, the first reader merged some: docs/demo-build.md).
READER_CONFIG = ReaderConfig(height=24)


def _printable(text: str) -> bool:
    return all(c in CHARSET for c in text)


def rendered_lines(text: str, font_size: int, height: int) -> list[tuple[torch.Tensor, str]]:
    """(line pixels, line text) for each line of `text` drawn at `font_size`; [] when the drawing's ink lines do not
    match the wrapped lines one to one (never trained on a guess)."""
    layout = TextLayout(width=READER_LAYOUT.width, height=max(READER_LAYOUT.height, 40 * font_size),
                        font_size=font_size, min_font_size=font_size, margin=READER_LAYOUT.margin)
    try:
        _, lines = fitted_lines(text, layout)
    except ValueError:
        return []
    grey = np.asarray(render_text_image(text, layout).convert("L"), dtype=np.float32)
    inked = ink_lines(grey)
    if len(inked) != len(lines):
        return []
    return [(line_pixels(grey, i.top, i.bottom, i.left, i.right, height), t) for i, t in zip(inked, lines)]


def _random_word(rng: random.Random) -> str:
    """A random token shaped like written words (lower case, capitalised, upper case, a number or punctuation),
    never a mix inside one word: mixed shapes taught the first reader to read "cr1me" and "SystemS"."""
    length = rng.randint(1, 9)
    shape = rng.choices(("lower", "title", "upper", "digits", "punctuation"), weights=(50, 20, 10, 10, 10))[0]
    if shape == "digits":
        return "".join(rng.choice(string.digits) for _ in range(length))
    if shape == "punctuation":
        return "".join(rng.choice(string.punctuation) for _ in range(rng.randint(1, 3)))
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
    return word.upper() if shape == "upper" else word.capitalize() if shape == "title" else word


def _random_text(rng: random.Random) -> str:
    return " ".join(_random_word(rng) for _ in range(rng.randint(2, 12)))


def _batch(pairs: Sequence[tuple[torch.Tensor, str]]) -> CTCBatch:
    pixels = stack_lines([p for p, _ in pairs])
    targets = torch.tensor([CHARSET.index(c) + 1 for _, t in pairs for c in t])
    return pixels, torch.tensor([TextReader.columns(p.shape[-1]) for p, _ in pairs]), targets, torch.tensor([len(t) for _, t in pairs])


def train_text_reader(out: Path, steps: int = 1500, batch_size: int = 32, seed: int = 0,
                      texts: Sequence[str] | None = None, log_every: int = 100) -> dict[str, Any]:
    """Train and save the reader with `training.json` (settings, losses, wall time)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pool = [t for t in (texts if texts is not None else [e.instruction for e in text_training_set(seed)])
            if _printable(t)]
    reader = TextReader(READER_CONFIG)
    pending: list[tuple[torch.Tensor, str]] = []

    def next_batch() -> CTCBatch:
        nonlocal pending
        while len(pending) < batch_size:
            text = _random_text(rng) if rng.random() < 0.25 else rng.choice(pool)
            pending += rendered_lines(text, rng.choice(TRAINING_FONT_SIZES), reader.config.height)
        rng.shuffle(pending)
        chunk, pending = pending[:batch_size], pending[batch_size:]
        return _batch(chunk)

    history = train_ctc(reader, next_batch, steps, log_every)
    reader.save_pretrained(out)
    record = {"steps": steps, "batch_size": batch_size, "seed": seed, "texts": len(pool),
              "font_sizes": list(TRAINING_FONT_SIZES), "parameters": sum(p.numel() for p in reader.parameters()),
              "wall_seconds": round(time.perf_counter() - started, 1), "history": history}
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def reading_accuracy(reader: TextReader, texts: Sequence[str], layout: TextLayout = READER_LAYOUT) -> dict[str, Any]:
    """How many `texts`, drawn in `layout`, read back exactly (whitespace collapsed), with the misread ones."""
    exact, misread = 0, []
    for text in texts:
        want = " ".join(text.split())
        try:
            got = reader.read(render_text_image(want, layout))
        except ValueError as err:  # too long for the layout: not legible, so not read
            got = f"(not drawn: {err})"
        if got == want:
            exact += 1
        else:
            misread.append({"text": want, "read": got})
    return {"exact": exact, "total": len(texts), "misread": misread}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    record = train_text_reader(args.out, steps=args.steps, seed=args.seed)
    print(f"saved to {args.out}: {record['wall_seconds']} s")


if __name__ == "__main__":
    main()
