"""The next demo's speech reader, measured on development requests spoken in the app's voice.

Why: issue 22 asks that requests of up to 40 words fit the speech path; a word the reader mishears reaches the LM as
another word. This speaks every development request (AdvBench sample, XSTest, validation, paraphrases, look-alike
checks; never trained on) with explorer.inputs.speech at 160 wpm and counts requests read back exactly (as
`explorer.model.speech_reader.spoken_text` writes them) and word errors, before and after the lexicon decoding.

    python benchmarks/demo_speech_reader.py --reader build/demo_next/speech_reader \\
        --advbench data/harmful_behaviors.csv --xstest data/xstest_prompts.csv

Writes benchmarks/results/demo_speech_reader.json: per set, exact / total, word errors and every misheard request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo_reader import measure_sets

from explorer.demo_model.speech_train import hearing_accuracy
from explorer.model.speech_reader import SpeechReader

RECORD = ROOT / "benchmarks" / "results" / "demo_speech_reader.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reader", type=Path, required=True)
    parser.add_argument("--advbench", required=True)
    parser.add_argument("--xstest", required=True)
    parser.add_argument("--out", type=Path, default=RECORD)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    reader = SpeechReader.from_pretrained(args.reader)
    training = json.loads((args.reader / "training.json").read_text())
    totals = ("exact", "total", "words", "word_errors_heard", "word_errors_read")
    record = {"training": training | {"history": None},
              **measure_sets(lambda texts: hearing_accuracy(reader, texts), args.advbench, args.xstest, totals)}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}: {({key: record[key] for key in totals})}")


if __name__ == "__main__":
    main()
