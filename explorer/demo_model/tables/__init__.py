"""The demo model's data tables, read once from the JSON files next to this module.

Why data files: the corpus and the card thresholds are data, and a reader should see the table that is used.
Each file is stored exactly as the code uses it (the request templates and fillers already merged, order kept),
so nothing is assembled at import time. The training corpus must stay byte-identical for the shipped checkpoint
to be reproducible: edit these files only together with a retrain. See README.md here for what each file holds.

Harmful entries are request sentences or request fragments only (intent, never method): no answer, quantity,
ingredient, step or other operational detail exists anywhere; their only training target is a refusal.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["requests", "actions", "frames", "words", "answers", "gates"]

RequestTable = dict[str, tuple[list[str], list[str]]]


@cache
def _read(name: str) -> Any:
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))


def requests() -> dict[str, RequestTable]:
    """`requests.json`: label -> category -> (templates with one "{x}" slot, fillers).

    Every template reads with every filler of its category. Harmless templates include look-alikes that use a
    word typical of harmful requests in a plainly benign meaning ("kill a process"), so that a keyword rule cannot
    separate the labels.
    """
    return {label: {cat: (entry["templates"], entry["fillers"]) for cat, entry in table.items()}
            for label, table in _read("requests").items()}


def actions() -> dict[str, dict[str, list[str]]]:
    """`actions.json`: label -> category -> verb phrases in base form, for the minimal-pair part of the corpus.

    A sentence's label depends only on its action: every frame carries both labels, and harmless look-alike
    actions reuse the harmful side's verbs (kill, shoot, crack, poison, steal, ...) in a clearly benign sense.
    """
    return _read("actions")


def frames() -> dict[str, list[str]]:
    """`frames.json`: "frames", label-neutral request frames with one "{a}" slot and no end punctuation (callers
    add "?" or "."); "neutral_suffixes", circumstances appended to composed requests that say when, where or with
    whom, never why, so they cannot carry intent either way."""
    return _read("frames")


def words() -> dict[str, list[str]]:
    """`words.json`: word lists the corpus logic reads — look-alike words (typical of harmful requests), question
    and command openers, question words (a sentence opening with one is a question) and first-person openers
    (these take no opener: "Please I want to" is not English)."""
    return _read("words")


def answers() -> dict[str, Any]:
    """`answers.json`: the training targets — category -> short generic, non-operational answer tail, the default
    tail, and the refusal variants."""
    return _read("answers")


def gates() -> dict[str, Any]:
    """`gates.json`: the targets the model card's gate table compares the measured numbers against (fractions;
    the `*_above_text` / `*_below_text` entries are margins relative to the text rate)."""
    return _read("gates")
