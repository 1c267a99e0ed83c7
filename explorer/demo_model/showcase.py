"""What the app shows about the demo's limits: the words it has seen, and a gallery of requests it reads.

    python -m explorer.demo_model.showcase assets/demo_model --eval runs/demo-eval

Why: the demo is a toy that knows only its training vocabulary, and visitors type their own words. So its
folder carries (1) `vocabulary.txt`, every word form of its training text (the app marks a typed word outside
it: the answer to such a request is not meaningful), and (2) `gallery.json`, held-out requests from the builtin
*evaluation* split (never trained on) whose rendered image the demo transcribes exactly, each with the three
steps of the story as an `eval --strength auto` run measured them (text refused? the same words as an image
refused? the image with ReGap refused?), and the share of harmful ones for which the whole story holds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from explorer.core.storage import write_atomic
from explorer.core.vocab import LABELS
from explorer.inputs.data import load_builtin
from explorer.inputs.media import prompt_words, vocabulary_form
from explorer.model.loading import folder_revision

from .corpus import NEUTRAL_SUFFIXES
from .data import load_training_data

__all__ = ["build_gallery", "known_words", "main"]

VOCABULARY_FILE = "vocabulary.txt"
GALLERY_FILE = "gallery.json"
_GALLERY_PER_LABEL = 12


def known_words(max_words: int = 16) -> list[str]:
    """Every word form of the demo's training text (sentences, the reading bag of words, composed tails)."""
    data = load_training_data(max_words)
    texts = data.instructions + list(NEUTRAL_SUFFIXES)
    words = {vocabulary_form(w) for w in data.words}
    words |= {vocabulary_form(w) for text in texts for w in prompt_words(text)}
    return sorted(words)


def build_gallery(folder: Path, run_dir: Path, per_label: int = _GALLERY_PER_LABEL) -> dict[str, Any]:
    """Gallery entries from the card's measurements (exact image transcription) and an eval run's generations."""
    run = json.loads((run_dir / "run.json").read_text())
    if run.get("revision") != folder_revision(folder):
        raise ValueError(f"{run_dir} evaluated other weights than {folder}")
    measured = json.loads((folder / "measurements.json").read_text())
    evaluation = load_builtin("evaluation")
    by_label = {label: [i for i in evaluation if i.label == label] for label in LABELS}
    exact = measured["image_transcription_exact_ids"]  # harmful items first, then harmless (as measured)
    read = dict(zip([i.id for i in by_label["harmful"] + by_label["harmless"]], exact))
    records = {}
    for line in (run_dir / "generations.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[(record["id"], record["modality"], record["mode"])] = record
    metrics = json.loads((run_dir / "metrics.json").read_text())
    items = []
    for label in LABELS:
        chosen = [i for i in by_label[label] if read.get(i.id) and (i.id, "image", "adaptive") in records]
        for item in chosen[:per_label]:
            steps = [records[(item.id, "text", "off")], records[(item.id, "image", "off")],
                     records[(item.id, "image", "adaptive")]]
            items.append({"id": item.id, "instruction": item.instruction, "label": label,
                          "text_refused": steps[0]["refused"], "image_refused": steps[1]["refused"],
                          "regap_refused": steps[2]["refused"], "alpha": steps[2]["alpha"]})
    harmful = [i for i in items if i["label"] == "harmful"]
    story = [i for i in harmful if i["text_refused"] and not i["image_refused"] and i["regap_refused"]]
    return {
        "revision": run["revision"],
        "strength": metrics["regap"].get("modality_strengths", {}),
        "max_new_tokens": metrics["max_new_tokens"],
        "items": items,
        "harmful_count": len(harmful),
        "harmful_whole_story": len(story),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo's vocabulary.txt and gallery.json")
    parser.add_argument("folder", type=Path, nargs="?", default=Path("assets/demo_model"))
    parser.add_argument("--eval", type=Path, required=True, help="a `python -m explorer eval --strength auto` run")
    args = parser.parse_args(argv)
    write_atomic(args.folder / VOCABULARY_FILE, "\n".join(known_words()) + "\n")
    gallery = build_gallery(args.folder, args.eval)
    write_atomic(args.folder / GALLERY_FILE, json.dumps(gallery, indent=1) + "\n")
    print(f"wrote {args.folder / VOCABULARY_FILE} and {args.folder / GALLERY_FILE}: "
          f"{len(gallery['items'])} requests; whole story for {gallery['harmful_whole_story']} of "
          f"{gallery['harmful_count']} harmful")


if __name__ == "__main__":
    main()
