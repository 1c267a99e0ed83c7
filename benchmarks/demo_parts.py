"""The next demo's committed parts (assets/demo_parts) measured again on the in-house development files, beside the
records of the parts the docs first measured: does a part retrained by its documented command do what the recorded
one did?

Why: `build/` is not kept between machines; the settled parts were retrained and committed (assets/demo_parts/README.md),
and the docs' tables describe the parts first trained. This says, per part and file, whether the committed one gives
the same verdicts (text adapter at × 1.5: refusals per category, broken answers) or readings (readers: every field
of `reading_accuracy` / `hearing_accuracy`, misread lists included), and its own counts where it does not. The
in-house files only (validation, paraphrases, look-alike checks): the public sets are not in the repository.

    python benchmarks/demo_parts.py

Writes benchmarks/results/demo_parts.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.demo_text_adapter import measure
from explorer.demo_model.data import LOOKALIKE_CHECKS_PATH, PARAPHRASES_PATH
from explorer.demo_model.reader_train import reading_accuracy
from explorer.demo_model.safety_adapter import scale_lora
from explorer.demo_model.speech_train import hearing_accuracy
from explorer.inputs.data import VALIDATION_PATH, load_prompts
from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT
from explorer.model.speech_reader import SpeechReader
from explorer.model.text_reader import TextReader

PARTS = ROOT / "assets" / "demo_parts"
RESULTS = ROOT / "benchmarks" / "results"
RECORD = RESULTS / "demo_parts.json"
FILES = {"validation": VALIDATION_PATH, "paraphrases": PARAPHRASES_PATH, "lookalike_checks": LOOKALIKE_CHECKS_PATH}
TEXT_VARIANT, TEXT_SCALE = "both_hinges_scale1.5", 1.5  # adapter 4 at its shipped strength (docs/demo-build.md)


def compare(got: dict[str, Any], recorded: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Whether `keys` agree, and the committed part's values of the counts (lists compared, not copied)."""
    return {"same": all(got[k] == recorded[k] for k in keys),
            "committed": {k: got[k] for k in keys if not isinstance(got[k], list)},
            "recorded": {k: recorded[k] for k in keys if not isinstance(recorded[k], list)}}


def text_adapter() -> dict[str, Any]:
    """The committed adapter at its shipped strength against the recorded variant: per file, refusals per category
    and refused / broken counts per label."""
    from peft import PeftModel

    recorded = json.loads((RESULTS / "demo_text_adapter_variants.json").read_text())[TEXT_VARIANT]["adapter"]
    base, tokenizer = SMOLLM2_135M_INSTRUCT.load(torch.float32)
    adapted = PeftModel.from_pretrained(base, str(PARTS / "text_adapter_v4"))
    scale_lora(adapted, TEXT_SCALE)
    got = measure(adapted.merge_and_unload().eval(), tokenizer, {n: load_prompts(p) for n, p in FILES.items()})
    flat = lambda r: {"refused_by_category": r["refused_by_category"],
                      **{f"{label} {what}": r[label][what]["count"] for label in ("harmful", "harmless")
                         if label in r for what in ("refused", "broken")}}
    return {name: compare(flat(got[name]), flat(recorded[name]), list(flat(got[name]))) for name in FILES}


def reader(kind: str) -> dict[str, Any]:
    """The committed image ("image") or speech reader against its benchmark's record: per file, every field of
    the accuracy function (misread lists included)."""
    part, cls, accuracy, record = (
        ("image_reader_24", TextReader, reading_accuracy, "demo_reader.json") if kind == "image" else
        ("speech_reader", SpeechReader, hearing_accuracy, "demo_speech_reader.json"))
    loaded = cls.from_pretrained(PARTS / part)  # type: ignore[attr-defined]
    recorded = json.loads((RESULTS / record).read_text())["sets"]
    result = {}
    for name, path in FILES.items():
        got = accuracy(loaded, [i.instruction for i in load_prompts(path)])  # type: ignore[operator]
        result[name] = compare(got, recorded[name], [k for k in got if k != "seconds"])
    return result


def main() -> None:
    """Measure the three parts and write RECORD."""
    torch.set_num_threads(2)
    started = time.perf_counter()
    record = {"text_adapter_v4": text_adapter(), "image_reader_24": reader("image"), "speech_reader": reader("speech")}
    for part, files in record.items():
        print(part, {name: r["same"] for name, r in files.items()})
    record["wall_seconds"] = round(time.perf_counter() - started, 1)  # type: ignore[assignment]
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    main()
