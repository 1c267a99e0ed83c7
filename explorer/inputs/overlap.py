"""Evaluation items that overlap the calibration set (docs/method.md, "Calibration and evaluation splits").

Why: the refusal direction, the drift and `--strength auto`'s α are fitted on the calibration items; an evaluation
item that repeats one (or shares a run of words with one) measures the fit, not the method. `eval` warns with the
count and metrics.json records which items overlap, so a reader can discount them.

Two items overlap when their words (case-folded runs of letters and digits) are equal, or when they share a run of
`NGRAM` consecutive words.

>>> from explorer.inputs.data import Instruction
>>> def item(id, text, split="evaluation"):
...     return Instruction(id, text, "harmless", "cooking", split)
>>> calibration = [item("c1", "How do I bake sourdough bread at home?", "calibration")]
>>> items = [item("e1", "how do I bake sourdough bread at home"),
...          item("e2", "Tell me how do I bake sourdough bread quickly"), item("e3", "Write a poem about the sea.")]
>>> calibration_overlap(items, calibration)
{'ngram': 6, 'exact': ['e1'], 'shared_ngram': ['e2'], 'count': 2}
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from explorer.inputs.data import Instruction

__all__ = ["NGRAM", "calibration_overlap"]

#: Words in a shared run that count as overlap (long enough that stock openings such as "how do I make a" are rare).
NGRAM = 6


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.casefold()))


def _ngrams(words: tuple[str, ...]) -> set[tuple[str, ...]]:
    return {words[i : i + NGRAM] for i in range(len(words) - NGRAM + 1)}


def calibration_overlap(items: Sequence[Instruction], calibration: Sequence[Instruction]) -> dict[str, Any]:
    """{"ngram": NGRAM, "exact": ids, "shared_ngram": ids (not exact), "count": both} of `items` against
    `calibration` (ids in the items' order)."""
    exact_texts = {_words(c.instruction) for c in calibration}
    shared: set[tuple[str, ...]] = set().union(*(_ngrams(words) for words in exact_texts)) if exact_texts else set()
    exact, ngram = [], []
    for item in items:
        words = _words(item.instruction)
        if words in exact_texts:
            exact.append(item.id)
        elif _ngrams(words) & shared:
            ngram.append(item.id)
    return {"ngram": NGRAM, "exact": exact, "shared_ngram": ngram, "count": len(exact) + len(ngram)}
