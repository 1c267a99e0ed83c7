"""A character reader of typographic images: the reading LM's eyes (explorer.model.reading_lm).

Why a character reader: the prototype (docs/demo-prototype.md, row 4) measured a whole-word pixel tower at 66-80%
of words read, and a small CRNN trained with CTC on rendered lines at 723 of 730 development requests read exactly.
It reads any word, so a request typed by anyone can be drawn and read.

How it reads: the picture's text lines are found from its ink (explorer.model.model_view.ink_lines), each line is cut,
scaled to `ReaderConfig.height` px and read column by column (convolutions, a bidirectional GRU, one class per
character plus the CTC blank); greedy CTC decoding gives the line's characters, and the lines are joined by spaces
(the renderer wraps at spaces). A picture with no ink reads as "".

>>> reader = TextReader.from_pretrained("assets/demo_model/image_reader")   # doctest: +SKIP
>>> reader.read(explorer.inputs.media.render_image("How do I bake bread?", layout))   # doctest: +SKIP
'How do I bake bread?'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from explorer.model.model_view import ink_lines

__all__ = ["CHARSET", "ReaderConfig", "TextReader", "ctc_greedy", "line_pixels"]


#: Printable ASCII: what the renderer's font draws and the reader can output. Class 0 is the CTC blank.
CHARSET = "".join(chr(c) for c in range(32, 127))


@dataclass(frozen=True)
class ReaderConfig:
    height: int = 16  # every line is scaled to this many pixel rows (about 8 px a character)
    channels: int = 64
    hidden: int = 96

    def __post_init__(self) -> None:
        if self.height % 4 or self.height < 8:
            raise ValueError(f"ReaderConfig.height must be a multiple of 4 and >= 8, got {self.height}")


def line_pixels(grey: np.ndarray, top: int, bottom: int, left: int, right: int, height: int) -> torch.Tensor:
    """One line of ink as a (1, height, width) float tensor in [0, 1] (1 = ink), scaled to `height` rows with its
    aspect kept, two pixels of white kept around the ink."""
    crop = grey[max(0, top - 2) : bottom + 2, max(0, left - 2) : right + 2]
    scale = height / crop.shape[0]
    width = max(4, round(crop.shape[1] * scale))
    scaled = Image.fromarray(crop.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(1.0 - np.asarray(scaled, dtype=np.float32) / 255.0)[None]


def stack_lines(lines: list[torch.Tensor]) -> torch.Tensor:
    """(1, height, W_i) lines as one (B, 1, height, max W) batch, right-padded with white (0)."""
    width = max(line.shape[-1] for line in lines)
    return torch.stack([nn.functional.pad(line, (0, width - line.shape[-1])) for line in lines])


def ctc_greedy(log_probs: torch.Tensor, charset: str = CHARSET) -> str:
    """Best path: the most likely class per column, repeats merged, blanks dropped; class k > 0 is charset[k - 1]."""
    best = log_probs.argmax(-1).tolist()
    chars, previous = [], 0
    for cls in best:
        if cls != previous and cls != 0:
            chars.append(charset[cls - 1])
        previous = cls
    return "".join(chars)


class TextReader(nn.Module):
    """CRNN: three conv blocks (height / 4, width / 4: two columns a character) → BiGRU → per-column character
    classes (+ blank)."""

    def __init__(self, config: ReaderConfig = ReaderConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels

        def block(cin: int, cout: int, pool: tuple[int, int] | None) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + ([nn.MaxPool2d(pool)] if pool else [])

        self.convs = nn.Sequential(*block(1, c // 2, (2, 2)), *block(c // 2, c, (2, 2)), *block(c, c, None))
        self.rnn = nn.GRU(c * config.height // 4, config.hidden, batch_first=True, bidirectional=True)
        self.classes = nn.Linear(2 * config.hidden, len(CHARSET) + 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 1, height, W) → (B, W // 4, classes) log-probabilities."""
        features = self.convs(pixels)  # (B, C, height/4, W/4)
        b, c, h, w = features.shape
        columns = features.permute(0, 3, 1, 2).reshape(b, w, c * h)
        return self.classes(self.rnn(columns)[0]).log_softmax(-1)

    @staticmethod
    def columns(width: int) -> int:
        """How many output columns a line `width` pixels wide gets."""
        return width // 4

    def lines_of(self, image: Image.Image) -> list[torch.Tensor]:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        return [line_pixels(grey, ln.top, ln.bottom, ln.left, ln.right, self.config.height) for ln in ink_lines(grey)]

    @torch.no_grad()
    def read(self, image: Image.Image) -> str:
        """The text of a typographic image, lines joined by single spaces."""
        lines = self.lines_of(image)
        if not lines:
            return ""
        was_training = self.training
        self.eval()
        try:
            log_probs = self(stack_lines(lines))
            texts = [ctc_greedy(lp[: self.columns(line.shape[-1])]) for lp, line in zip(log_probs, lines)]
        finally:
            self.train(was_training)
        return " ".join(t.strip() for t in texts if t.strip())

    def save_pretrained(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "reader_config.json").write_text(json.dumps({"kind": "text_reader", **asdict(self.config)}) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "reader.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> TextReader:
        folder = Path(folder)
        raw = json.loads((folder / "reader_config.json").read_text())
        if raw.pop("kind", None) != "text_reader":
            raise ValueError(f"{folder} does not hold a text reader (reader_config.json kind != 'text_reader')")
        reader = cls(ReaderConfig(**raw))
        reader.load_state_dict(load_file(str(folder / "reader.safetensors")))
        return reader.eval()
