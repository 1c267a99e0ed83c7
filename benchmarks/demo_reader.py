"""The next demo's character reader, measured on development requests drawn in the demo's image layout.

Why: issue 22 asks that requests of up to 40 words stay legible as images; a request the reader misreads reaches
the LM as other words. This draws every development request (AdvBench sample, XSTest, validation, paraphrases;
never trained on) with explorer.inputs.typography in `READER_LAYOUT` and counts exact readings (whitespace collapsed).

    python benchmarks/demo_reader.py --reader build/demo_next/image_reader \\
        --advbench data/harmful_behaviors.csv --xstest data/xstest_prompts.csv

Writes benchmarks/results/demo_reader.json: per set, exact / total and every misreading.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo_text_adapter import dev_sets

from explorer.demo_model.reader_train import READER_LAYOUT, reading_accuracy
from explorer.model.text_reader import TextReader

RECORD = ROOT / "benchmarks" / "results" / "demo_reader.json"


def measure_sets(accuracy: Callable[[list[str]], dict[str, Any]], advbench: str, xstest: str,
                 totals: tuple[str, ...]) -> dict[str, Any]:
    """{"sets": {name: accuracy(requests) + seconds}, total: sum over sets for each of `totals`} on the development
    sets (shared by this benchmark and the speech reader's)."""
    record: dict[str, Any] = {"sets": {}, **dict.fromkeys(totals, 0)}
    for name, items in dev_sets(advbench, xstest).items():
        started = time.perf_counter()
        result = accuracy([i.instruction for i in items])
        result["seconds"] = round(time.perf_counter() - started, 1)
        record["sets"][name] = result
        for key in totals:
            record[key] += result[key]
        print(name, {key: result[key] for key in totals}, flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reader", type=Path, required=True)
    parser.add_argument("--advbench", required=True)
    parser.add_argument("--xstest", required=True)
    parser.add_argument("--out", type=Path, default=RECORD)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    reader = TextReader.from_pretrained(args.reader)
    training = json.loads((args.reader / "training.json").read_text())
    record = {"layout": dataclasses.asdict(READER_LAYOUT), "training": training | {"history": None},
              **measure_sets(lambda texts: reading_accuracy(reader, texts), args.advbench, args.xstest,
                             ("exact", "total"))}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}: {record['exact']}/{record['total']}")


if __name__ == "__main__":
    main()
