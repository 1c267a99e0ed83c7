"""A character reader of speech: the reading LM's ears (explorer.model.reading_lm), as `TextReader` is its eyes.

Why characters, then words: the demo prototype (docs/demo-prototype.md, row 4) trained a CTC reader of espeak-ng's
voice that heard the sound well but spelled by ear ("nife", "gards", "creat"): one word in three to five was wrong.
English spelling is not all in the sound, so a heard word that is not a word is decoded against a word list
(`Lexicon`: wordfreq's most frequent English words): among the words within a few edits of it, the one the reader's
own CTC scores find likeliest on that word's stretch of audio (so "gards" becomes "guards" when the reader heard
a "g", never "cards" for being commoner); frequency only breaks near ties. A word with no near word is kept as
heard.

How it hears: 16 kHz audio → log-mel frames (25 ms windows every 10 ms, normalised per clip) → two 1-D
convolutions (the first halves the frame rate: one output column every 20 ms, a few per spoken character) → a
bidirectional GRU → one class per character (space, apostrophe, a–z) plus the CTC blank.

>>> reader = SpeechReader.from_pretrained("assets/demo_model/reading_lm")       # doctest: +SKIP
>>> reader.read(explorer.inputs.speech.render_audio("How do I bake bread?"))          # doctest: +SKIP
'how do i bake bread'
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from explorer.core.vocab import SAMPLE_RATE
from explorer.model.text_reader import ctc_greedy

__all__ = ["ALPHABET", "Lexicon", "SpeechReader", "SpeechReaderConfig", "log_mel", "spoken_text", "word_spans"]


#: What the reader writes: space, apostrophe, a-z. Class 0 is the CTC blank.
ALPHABET = " '" + "abcdefghijklmnopqrstuvwxyz"

_WINDOW, _HOP = 400, 160  # 25 ms, 10 ms at 16 kHz


@dataclass(frozen=True)
class SpeechReaderConfig:
    n_mels: int = 64
    channels: int = 128
    hidden: int = 160
    layers: int = 2
    lexicon_words: int = 60_000  # how many of wordfreq's most frequent English words heard words snap to


def spoken_text(text: str) -> str:
    """What a listener can write of `text`: lower case, digits as words, only the reader's characters, single
    spaces (the reader's training target, and how its readings are compared)."""
    from num2words import num2words

    text = re.sub(r"\d+", lambda m: f" {num2words(int(m.group()))} ", text.lower().replace("’", "'"))
    text = "".join(c if c in ALPHABET else " " for c in text.replace("-", " "))
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _mel_filters(n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=_WINDOW // 2 + 1, num_mel_filters=n_mels, min_frequency=20.0,
                           max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney")
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))  # (freq, n_mels)


def log_mel(audio: np.ndarray, n_mels: int = 64) -> torch.Tensor:
    """(frames, n_mels) log-mel features of 16 kHz mono audio, normalised to zero mean and unit variance."""
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if wave.numel() < _WINDOW:
        wave = torch.nn.functional.pad(wave, (0, _WINDOW - wave.numel()))
    spectrum = torch.stft(wave, n_fft=_WINDOW, hop_length=_HOP, window=torch.hann_window(_WINDOW),
                          return_complex=True).abs() ** 2  # (freq, frames)
    mel = torch.log(torch.clamp(spectrum.T @ _mel_filters(n_mels), min=1e-10))
    return (mel - mel.mean()) / (mel.std() + 1e-5)


class Lexicon:
    """English words, most frequent first; `snap` turns a word heard by ear into the nearest real word."""

    def __init__(self, words: list[str]) -> None:
        self.words = list(dict.fromkeys(w for w in words if w and set(w) <= set(ALPHABET[1:])))
        self.known = set(self.words)

    @classmethod
    def english(cls, size: int) -> Lexicon:
        from wordfreq import top_n_list

        return cls(top_n_list("en", size))

    def near(self, word: str, limit: int = 25) -> list[tuple[str, int]]:
        """(word, frequency rank) of the lexicon's words within max(1, len // 3) edits of `word`, at most `limit`."""
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        found = process.extract(word, self.words, scorer=Levenshtein.distance, score_cutoff=max(1, len(word) // 3),
                                limit=limit)
        return [(match[0], match[2]) for match in found]


#: How much a word's frequency rank weighs against the reader's own evidence (nats per log rank): a tie-breaker.
_FREQUENCY_WEIGHT = 0.1


def word_spans(log_probs: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) column spans of the heard words: stretches between the columns whose best class is a space,
    each with at least one character."""
    best = log_probs.argmax(-1).tolist()
    space = ALPHABET.index(" ") + 1
    spans, start = [], 0
    for column, cls in enumerate(best + [space]):
        if cls == space:
            if any(c not in (0, space) for c in best[start:column]):
                spans.append((start, column))
            start = column + 1
    return spans


class SpeechReader(nn.Module):
    """Log-mel frames → conv (frame rate / 2) → BiGRU → per-column character classes (+ blank)."""

    def __init__(self, config: SpeechReaderConfig = SpeechReaderConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.convs = nn.Sequential(nn.Conv1d(config.n_mels, c, 5, stride=2, padding=2), nn.GELU(),
                                   nn.Conv1d(c, c, 5, padding=2), nn.GELU())
        self.rnn = nn.GRU(c, config.hidden, num_layers=config.layers, batch_first=True, bidirectional=True)
        self.classes = nn.Linear(2 * config.hidden, len(ALPHABET) + 1)
        self._lexicon: Lexicon | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, frames, n_mels) → (B, columns, classes) log-probabilities."""
        hidden = self.convs(features.transpose(1, 2)).transpose(1, 2)
        return self.classes(self.rnn(hidden)[0]).log_softmax(-1)

    @staticmethod
    def columns(frames: int) -> int:
        """How many output columns `frames` feature frames give."""
        return (frames + 1) // 2

    @property
    def lexicon(self) -> Lexicon:
        if self._lexicon is None:
            self._lexicon = Lexicon.english(self.config.lexicon_words)
        return self._lexicon

    @torch.no_grad()
    def log_probs(self, audio: np.ndarray) -> torch.Tensor:
        """(columns, classes) log-probabilities of one clip."""
        was_training = self.training
        self.eval()
        try:
            return self(log_mel(audio, self.config.n_mels)[None])[0]
        finally:
            self.train(was_training)

    def read(self, audio: np.ndarray) -> str:
        """The words of a spoken request: each heard word, or, for a non-word, the likeliest near word."""
        return self.heard_and_read(audio)[1]

    def heard_and_read(self, audio: np.ndarray) -> tuple[str, str]:
        """(the characters heard by greedy CTC before any word is decoded against the lexicon, `read`) of one clip,
        from one forward pass."""
        log_probs = self.log_probs(audio)
        heard = " ".join(ctc_greedy(log_probs, ALPHABET).split())
        return heard, " ".join(self._word(log_probs[start:end]) for start, end in word_spans(log_probs))

    def _word(self, span: torch.Tensor) -> str:
        heard = ctc_greedy(span, ALPHABET).strip()
        if heard in self.lexicon.known or len(heard) < 3:
            return heard
        candidates = self.lexicon.near(heard)
        if not candidates:
            return heard
        targets = [torch.tensor([ALPHABET.index(c) + 1 for c in word]) for word, _ in candidates]
        nll = nn.functional.ctc_loss(span[:, None].expand(-1, len(targets), -1), torch.cat(targets),
                                     torch.full((len(targets),), span.shape[0]),
                                     torch.tensor([len(t) for t in targets]), reduction="none")  # inf: too long
        score = nll + _FREQUENCY_WEIGHT * torch.log1p(torch.tensor([float(rank) for _, rank in candidates]))
        return candidates[int(score.argmin())][0]

    def save_pretrained(self, folder: Path | str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "speech_reader_config.json").write_text(
            json.dumps({"kind": "speech_reader", **asdict(self.config)}) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "speech_reader.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> SpeechReader:
        folder = Path(folder)
        raw = json.loads((folder / "speech_reader_config.json").read_text())
        if raw.pop("kind", None) != "speech_reader":
            raise ValueError(f"{folder} does not hold a speech reader (speech_reader_config.json kind != "
                             "'speech_reader')")
        reader = cls(SpeechReaderConfig(**raw))
        reader.load_state_dict(load_file(str(folder / "speech_reader.safetensors")))
        return reader.eval()
