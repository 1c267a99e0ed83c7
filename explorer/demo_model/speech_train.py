"""Train the reading LM's speech reader (explorer.model.speech_reader) on the app's own voice.

Why the app's voice: the demo's speech is spoken by espeak-ng (explorer.inputs.speech) at 160 wpm, or 200 / 240 wpm when a
long request must fit a window, so the reader learns exactly those clips, at every rate. The text is the in-house
training text (explorer.demo_model.training_text) plus random sequences of frequent English words, so that the
reader hears many spellings; no development or evaluation sentence is spoken for training.

    python -m explorer.demo_model.speech_train --out build/demo_next/speech_reader
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from explorer.inputs.speech import SPEECH_RATES_WPM, prompt_words, speak
from explorer.model.speech_reader import (
    ALPHABET,
    Lexicon,
    SpeechReader,
    SpeechReaderConfig,
    log_mel,
    spoken_text,
)

from .ctc_training import CTCBatch, train_ctc
from .training_text import text_training_set

__all__ = ["RANDOM_SHARE", "hearing_accuracy", "spoken_examples", "train_speech_reader"]


#: Share of the utterances that are random sequences of frequent words (the rest: in-house requests).
RANDOM_SHARE = 0.4

# Random sequences draw from this many of the most frequent English words.
_RANDOM_WORDS = 30_000


def _random_words(rng: random.Random, words: Sequence[str]) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))


def spoken_examples(texts: Sequence[str], rng: random.Random, n_mels: int) -> list[tuple[torch.Tensor, str]]:
    """(log-mel features in float16, target characters) for each text spoken at a random rate; a text with no
    speakable characters is skipped."""
    examples = []
    for text in texts:
        words = " ".join(prompt_words(text))
        target = spoken_text(words)
        if target:
            audio = speak(words, rng.choice(SPEECH_RATES_WPM))
            examples.append((log_mel(audio, n_mels).half(), target))
    return examples


def _batch(pairs: Sequence[tuple[torch.Tensor, str]]) -> CTCBatch:
    frames = torch.nn.utils.rnn.pad_sequence([f.float() for f, _ in pairs], batch_first=True)
    targets = torch.tensor([ALPHABET.index(c) + 1 for _, t in pairs for c in t])
    return (frames, torch.tensor([SpeechReader.columns(f.shape[0]) for f, _ in pairs]), targets,
            torch.tensor([len(t) for _, t in pairs]))


def train_speech_reader(out: Path, utterances: int = 6000, steps: int = 3000, batch_size: int = 16, seed: int = 0,
                        log_every: int = 100) -> dict[str, Any]:
    """Speak the training text, train and save the reader with `training.json` (settings, losses, wall time)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    config = SpeechReaderConfig()
    requests = [e.instruction for e in text_training_set(seed)]
    frequent = Lexicon.english(_RANDOM_WORDS).words
    n_random = round(utterances * RANDOM_SHARE)
    texts = rng.sample(requests, min(len(requests), utterances - n_random))
    texts += [_random_words(rng, frequent) for _ in range(n_random)]
    examples = spoken_examples(texts, rng, config.n_mels)
    spoken_seconds = time.perf_counter() - started
    reader = SpeechReader(config)
    history = train_ctc(reader, lambda: _batch(rng.sample(examples, batch_size)), steps, log_every)
    reader.save_pretrained(out)
    record = {"utterances": len(examples), "random_share": RANDOM_SHARE, "rates_wpm": list(SPEECH_RATES_WPM),
              "steps": steps, "batch_size": batch_size, "seed": seed,
              "parameters": sum(p.numel() for p in reader.parameters()),
              "spoken_seconds": round(spoken_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
              "history": history}
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def hearing_accuracy(reader: SpeechReader, texts: Sequence[str]) -> dict[str, Any]:
    """How many `texts`, spoken at 160 wpm, read back exactly (as `spoken_text`), and word errors (edit distance
    over words) before and after decoding against the lexicon, with the misheard ones."""
    from rapidfuzz.distance import Levenshtein

    exact, errors_heard, errors_read, words, misheard = 0, 0, 0, 0, []
    for text in texts:
        spoken_words = " ".join(prompt_words(text))
        want = spoken_text(spoken_words).split()
        audio = speak(spoken_words)
        heard, read = (words.split() for words in reader.heard_and_read(audio))
        words += len(want)
        errors_heard += Levenshtein.distance(want, heard)
        errors_read += Levenshtein.distance(want, read)
        if read == want:
            exact += 1
        else:
            misheard.append({"text": " ".join(want), "heard": " ".join(heard), "read": " ".join(read)})
    return {"exact": exact, "total": len(texts), "words": words, "word_errors_heard": errors_heard,
            "word_errors_read": errors_read, "misheard": misheard}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--utterances", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    record = train_speech_reader(args.out, utterances=args.utterances, steps=args.steps, seed=args.seed)
    print(f"saved to {args.out}: {record['wall_seconds']} s")


if __name__ == "__main__":
    main()
