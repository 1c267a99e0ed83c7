"""The in-house text the next demo's safety adapter trains on, decontaminated against every held-out text.

Two sources, both written for this project: a sample of the template corpus (explorer.demo_model.corpus: both
labels and its look-alikes) and `tables/free_requests.jsonl`, free-form requests in ordinary English (ten kinds
of harmless look-alikes, everyday requests, and harmful request sentences that reuse the look-alikes' words).
Harmful lines are request sentences only; their only target is a refusal.

Decontamination (6 words, case and punctuation ignored) runs against the builtin evaluation split, the
validation, paraphrase and look-alike check files, and the public benchmarks used for development. The public benchmarks' text
is not in the repository: `tables/public_6grams.txt` holds only a salted hash of each of their 6-grams, written
by `python -m explorer.demo_model.training_text --fingerprint FORMAT:PATH ...` (formats as
explorer.inputs.importers reads them), so a training sentence that echoes a benchmark phrase is dropped without
shipping the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from .corpus import DECONTAMINATION_NGRAM, Example, generate_instructions, word_ngrams
from .data import LOOKALIKE_CHECKS_PATH, held_out_texts

__all__ = ["FREE_REQUESTS_PATH", "PUBLIC_NGRAMS_PATH", "TEMPLATE_SAMPLE", "fingerprint", "free_requests",
           "public_fingerprints", "text_training_set"]


TABLES = Path(__file__).resolve().parent / "tables"
FREE_REQUESTS_PATH = TABLES / "free_requests.jsonl"
PUBLIC_NGRAMS_PATH = TABLES / "public_6grams.txt"

#: How many template-corpus sentences of each kind join the free-form requests (docs/demo-prototype.md, row 1).
TEMPLATE_SAMPLE = {"harmful": 1300, "harmless": 650, "lookalike": 650}

# The salt makes the hashes useless as a lookup table of common English phrases; it is not a secret.
_SALT = b"safety-geometry-explorer/decontamination/1"


def fingerprint(ngram: tuple[str, ...]) -> str:
    """A short salted hash of one normalised n-gram (words joined by single spaces)."""
    return hashlib.sha256(_SALT + " ".join(ngram).encode()).hexdigest()[:16]


def _fingerprints_of(text: str, n: int = DECONTAMINATION_NGRAM) -> set[str]:
    return {fingerprint(g) for g in word_ngrams(text, n)}


def public_fingerprints(path: Path = PUBLIC_NGRAMS_PATH) -> set[str]:
    """The hashed 6-grams of the public development benchmarks (empty when the file is absent)."""
    if not path.is_file():
        return set()
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def free_requests(path: Path = FREE_REQUESTS_PATH) -> list[Example]:
    """The free-form in-house requests, as corpus examples."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row["label"] not in ("harmful", "harmless"):
                raise ValueError(f"label must be harmful or harmless, got {row['label']!r}")
            rows.append(Example(str(row["instruction"]), row["label"], str(row["category"]), bool(row["lookalike"])))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: {type(err).__name__}: {err}") from err
    return rows


def _template_sample(rng: random.Random, max_words: int, sample: dict[str, int]) -> list[Example]:
    if not any(sample.values()):
        return []
    corpus = generate_instructions(max_words)
    kinds = {
        "harmful": [e for e in corpus if e.label == "harmful"],
        "harmless": [e for e in corpus if e.label == "harmless" and not e.lookalike],
        "lookalike": [e for e in corpus if e.lookalike],
    }
    return [e for kind, pool in kinds.items() for e in rng.sample(pool, min(sample[kind], len(pool)))]


def text_training_set(seed: int = 0, max_words: int = 40, free_path: Path = FREE_REQUESTS_PATH,
                      fingerprints_path: Path = PUBLIC_NGRAMS_PATH,
                      template_sample: dict[str, int] = TEMPLATE_SAMPLE) -> list[Example]:
    """Template sample + free-form requests, without any sentence sharing a 6-gram with a held-out text,
    in a seeded order."""
    rng = random.Random(seed)
    examples = _template_sample(rng, max_words, template_sample) + free_requests(free_path)
    checks = [e.instruction for e in free_requests(LOOKALIKE_CHECKS_PATH)] if LOOKALIKE_CHECKS_PATH.is_file() else []
    banned = public_fingerprints(fingerprints_path).union(*(_fingerprints_of(t) for t in held_out_texts() + checks))
    kept = [e for e in examples if not (_fingerprints_of(e.instruction) & banned)]
    rng.shuffle(kept)
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write tables/public_6grams.txt from public benchmark files.")
    parser.add_argument("--fingerprint", nargs="+", required=True, metavar="FORMAT:PATH",
                        help="benchmark files as explorer.inputs.importers reads them, e.g. advbench:harmful_behaviors.csv")
    parser.add_argument("--out", type=Path, default=PUBLIC_NGRAMS_PATH)
    args = parser.parse_args(argv)
    from explorer.inputs.importers import load_source

    hashes: set[str] = set()
    lines = []
    for spec in args.fingerprint:
        items = load_source(spec)
        found = set().union(*(_fingerprints_of(i.instruction) for i in items))
        lines.append(f"# {spec.split(':')[0]}: {len(items)} requests, {len(found)} distinct 6-grams")
        hashes |= found
    body = "\n".join(lines + sorted(hashes)) + "\n"
    args.out.write_text(body)
    print(f"wrote {len(hashes)} fingerprints to {args.out}")


if __name__ == "__main__":
    main()
