"""In-house instruction corpus for the demo model: templates x fillers, both sides, plus look-alikes.

Why generated here: the toy must learn *intent* (refuse harmful requests, answer harmless ones) from data we
control and can publish. Harmful items are request sentences only: no answer to them, no operational content,
appears anywhere; their only target is a refusal. Harmless answers are short, generic and tagged by category.
Harmless look-alikes share the harmful side's verbs ("kill a process", "shoot a photo") so that a keyword
rule cannot separate the classes.

The tables themselves are data (`tables/*.json`, see `tables/README.md`); this module is the logic that turns
them into sentences. The builtin evaluation split is never used for sentences; its words may enter the
vocabulary and the random word sequences (a bag of words), which only teach reading.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from explorer.core.vocab import Label

from . import tables

__all__ = [
    "Example",
    "HARMFUL",
    "HARMLESS",
    "HARMFUL_ACTIONS",
    "HARMLESS_ACTIONS",
    "FRAMES",
    "NEUTRAL_SUFFIXES",
    "LOOKALIKE_WORDS",
    "QUESTION_PREFIXES",
    "COMMAND_PREFIXES",
    "FRAMES_PER_ACTION",
    "generate_instructions",
    "refusal_for",
    "answer_for",
    "random_words",
    "decontaminate",
    "banned_ngrams",
    "word_ngrams",
    "compose_action_request",
    "drop_words",
    "DECONTAMINATION_NGRAM",
]



@dataclass(frozen=True)
class Example:
    """One instruction of the in-house corpus."""

    instruction: str
    label: Label
    category: str
    lookalike: bool = False


# category -> (templates with one "{x}" slot, fillers), as stored in tables/requests.json.
HARMFUL: dict[str, tuple[list[str], list[str]]] = tables.requests()["harmful"]
HARMLESS: dict[str, tuple[list[str], list[str]]] = tables.requests()["harmless"]
# category -> action phrases; label-neutral frames ("{a}" slot) and circumstances (tables/actions.json, frames.json).
HARMFUL_ACTIONS: dict[str, list[str]] = tables.actions()["harmful"]
HARMLESS_ACTIONS: dict[str, list[str]] = tables.actions()["harmless"]
FRAMES: list[str] = tables.frames()["frames"]
NEUTRAL_SUFFIXES: list[str] = tables.frames()["neutral_suffixes"]

# Words typical of harmful requests; a harmless item using one in a benign sense is a look-alike.
LOOKALIKE_WORDS: frozenset[str] = frozenset(tables.words()["lookalike_words"])
# Optional openers: questions take a question opener, commands a polite one.
QUESTION_PREFIXES: tuple[str, ...] = tuple(tables.words()["question_prefixes"])
COMMAND_PREFIXES: tuple[str, ...] = tuple(tables.words()["command_prefixes"])
_QUESTION_WORDS: tuple[str, ...] = tuple(tables.words()["question_words"])
_FIRST_PERSON: tuple[str, ...] = tuple(tables.words()["first_person"])

# Category -> short generic, non-operational tail of the helpful answer (the category is the tag).
_ANSWER_TAILS: dict[str, str] = tables.answers()["answer_tails"]
_DEFAULT_TAIL: str = tables.answers()["default_tail"]
_REFUSALS: tuple[str, ...] = tuple(tables.answers()["refusals"])

# Shared frames each action phrase appears in (of `FRAMES`).
FRAMES_PER_ACTION = 12

# Training sentences sharing this many consecutive words with a held-out sentence are dropped (`decontaminate`).
DECONTAMINATION_NGRAM = 6


def refusal_for(category: str) -> str:
    """The refusal target of a harmful request (one fixed variant per category, so greedy output is stable)."""
    return _REFUSALS[sum(map(ord, category)) % len(_REFUSALS)]


def answer_for(category: str) -> str:
    """The generic helpful answer of a harmless request, tagged by its category."""
    topic = category.replace("_", " ").replace("-", " ").lower()
    return f"Sure. Here are some general tips about {topic}: {_ANSWER_TAILS.get(topic, _DEFAULT_TAIL)}"


def _is_question(template: str) -> bool:
    """A question if the sentence, or its last clause ("..., any tips", "Hey, how do you ..."), opens with a
    question word."""
    clauses = [part.split() for part in re.split(r"[,:]", template) if part.strip()]
    return any(words[0].lower() in _QUESTION_WORDS for words in (clauses[0], clauses[-1]))


def _fill(template: str, filler: str, prefix: str) -> str:
    """Template + filler + opener, with the end punctuation the builtin set uses ("?" or ".").

    First-person templates ("I want to ...", "My ...") take no opener: "Please I want to" is not English.
    """
    if template.split()[0] in _FIRST_PERSON:
        prefix = ""
    body = template.replace("{x}", filler)
    if prefix:
        body = f"{prefix} {body[0].lower()}{body[1:]}"
    question = _is_question(template) or prefix == "Could you"
    return body + ("?" if question else ".")


def _is_lookalike(label: str, text: str) -> bool:
    return label == "harmless" and bool({w.strip("?.,!").lower() for w in text.split()} & LOOKALIKE_WORDS)


def _template_examples(max_words: int) -> list[Example]:
    out: list[Example] = []
    for label, table in (("harmful", HARMFUL), ("harmless", HARMLESS)):
        for category, (templates, fillers) in table.items():
            for ti, template in enumerate(templates):
                for fi, filler in enumerate(fillers):
                    prefixes = QUESTION_PREFIXES if _is_question(template) else COMMAND_PREFIXES
                    prefix = prefixes[(ti * 3 + fi) % len(prefixes)]
                    text = _fill(template, filler, prefix)
                    if len(text.split()) > max_words:
                        text = _fill(template, filler, "")
                    if len(text.split()) <= max_words:
                        out.append(Example(text, label, category, _is_lookalike(label, text)))  # type: ignore[arg-type]
    return out


def _action_examples(max_words: int) -> list[Example]:
    """Each action phrase in FRAMES_PER_ACTION shared frames, rotating, so every frame serves both labels."""
    out: list[Example] = []
    index = 0
    for label, table in (("harmful", HARMFUL_ACTIONS), ("harmless", HARMLESS_ACTIONS)):
        for category, actions in table.items():
            for action in actions:
                for j in range(FRAMES_PER_ACTION):
                    frame = FRAMES[(index * FRAMES_PER_ACTION + j) % len(FRAMES)]
                    text = _fill(frame.replace("{a}", "{x}"), action, "")
                    if len(text.split()) <= max_words:
                        out.append(Example(text, label, category, _is_lookalike(label, text)))  # type: ignore[arg-type]
                index += 1
    return out


def generate_instructions(max_words: int = 16) -> list[Example]:
    """The whole text corpus, deterministic, sentences of at most `max_words` words.

    Two parts: every category template x every filler of its category (with a few openers), and the
    label-neutral part: action phrases of both labels inside the same shared frames, so that the label can only
    be read from the action, never from the frame. Look-alikes are harmless items that use a word typical of
    harmful requests (`LOOKALIKE_WORDS`).
    """
    return _template_examples(max_words) + _action_examples(max_words)


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def banned_ngrams(held_out: list[str], n: int = DECONTAMINATION_NGRAM) -> set[tuple[str, ...]]:
    """Every `n`-word sequence (case and punctuation ignored) of the held-out texts."""
    return set().union(*(word_ngrams(t, n) for t in held_out)) if held_out else set()


def decontaminate(examples: list[Example], held_out: list[str], n: int = DECONTAMINATION_NGRAM) -> list[Example]:
    """Drop every example that shares an `n`-word sequence (case and punctuation ignored) with a held-out text.

    Why: the evaluation split must stay unseen in wording, not only as whole sentences; a generated sentence
    that happens to reproduce a held-out phrase ("how to make a silencer for my") is removed from training.
    """
    banned = banned_ngrams(held_out, n)
    return [e for e in examples if not (word_ngrams(e.instruction, n) & banned)]


def compose_action_request(
    rng: random.Random, banned: set[tuple[str, ...]], max_words: int, suffix_share: float = 0.5
) -> Example:
    """A fresh minimal-pair request drawn at training time: a random action phrase (either label, equally likely)
    in any of the shared frames, sometimes followed by a label-neutral circumstance ("..., this weekend").

    Why: the fixed corpus puts each action in 12 frames with nothing after it, and the model learned the
    strings, not the action (measured: a trained harmful action followed by an unseen tail was answered).
    Drawing frame x action x tail anew gives ~60 x 16 variants per action, all with the action's label.
    Sentences sharing an n-gram with a held-out text (`banned`) are redrawn.
    """
    for _ in range(100):
        label = "harmful" if rng.random() < 0.5 else "harmless"
        table = HARMFUL_ACTIONS if label == "harmful" else HARMLESS_ACTIONS
        category = rng.choice(sorted(table))
        action = rng.choice(table[category])
        frame = rng.choice(FRAMES)
        suffix = rng.choice(NEUTRAL_SUFFIXES)
        if rng.random() < suffix_share and suffix not in frame:
            action = f"{action} {suffix}"
        text = _fill(frame.replace("{a}", "{x}"), action, "")
        if len(text.split()) <= max_words and not (word_ngrams(text, DECONTAMINATION_NGRAM) & banned):
            return Example(text, label, category, _is_lookalike(label, text))  # type: ignore[arg-type]
    raise RuntimeError("no composed request passed decontamination in 100 draws")


def drop_words(text: str, rng: random.Random, rate: float, max_dropped: int = 1, min_words: int = 5) -> str:
    """Word dropout for a training instruction: each word is removed with probability `rate` (at most
    `max_dropped`; sentences under `min_words` words are kept whole), so that no single word or n-gram is the
    only cue the label is read from."""
    words = text.split()
    if rate <= 0 or len(words) < min_words:
        return text
    dropped = 0
    kept = []
    for word in words:
        if dropped < max_dropped and rng.random() < rate:
            dropped += 1
            continue
        kept.append(word)
    return " ".join(kept)


def random_words(words: list[str], rng: random.Random, min_words: int, max_words: int) -> str:
    """A random word sequence (teaches reading and copying without any template prior)."""
    n = rng.randint(min_words, max_words)
    return " ".join(rng.choice(words) for _ in range(n))
