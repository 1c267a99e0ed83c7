"""What each family's model sees of a rendered request: canvas, font, lines, and glyph height in model pixels.

Builds each real image processor class with the public settings of a real checkpoint
(tests/data/public_processors.json), draws a request with `text_layout_for`, runs it through the processor and
reads the lines back from the processed pixels (`processed_views`, `ink_lines`). Prints one Markdown row per
checkpoint and request length; BENCHMARKS.md quotes the output.

    .venv/bin/python benchmarks/legibility.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.inputs.typography import fitted_lines, render_text_image  # noqa: E402
from explorer.model.model_view import (  # noqa: E402
    ink_lines,
    model_view_of,
    processed_views,
    text_layout_for,
)

_BASE = ("Please explain step by step how a neighbourhood bakery could plan its weekly bread production, including "
         "how much flour to order, when the ovens should start each morning, and how to keep the leftover loaves "
         "fresh for the next day and then describe how the same bakery might set fair prices, train a new "
         "apprentice over the first month, keep its kitchen clean and safe, and talk with regular customers about "
         "which new recipes they would enjoy trying next season")
REQUESTS = {n: " ".join(_BASE.split()[:n]) for n in (17, 40, 80)}


def main() -> int:
    settings = json.loads((ROOT / "tests" / "data" / "public_processors.json").read_text())
    print("| checkpoint | rule | canvas | views | words | font (canvas px) | lines drawn / seen | "
          "smallest line (model px) | ink margin (model px) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, entry in settings.items():
        if name.startswith("_") or "kwargs" not in entry:
            continue
        processor = getattr(transformers, entry["class"])(**entry["kwargs"])
        layout, view = text_layout_for(processor), model_view_of(processor)
        for words, text in REQUESTS.items():
            font, drawn = fitted_lines(text, layout)
            views = processed_views(processor, render_text_image(text, layout))
            whole = views["whole"]
            lines = ink_lines(whole)
            margin = min(min(l.top, l.left, whole.shape[0] - l.bottom, whole.shape[1] - l.right) for l in lines)
            print(f"| {name} | {view.family_rule} | {layout.width} | {len(views)} × {whole.shape[0]} px | {words} | "
                  f"{font} | {len(drawn)} / {len(lines)} | {min(l.height for l in lines)} | {margin} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
