"""The speech reader (explorer.model.speech_reader): targets, word spans, decoding a non-word by the reader's own CTC
evidence against the lexicon, features, and the folder round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.model.speech_reader import (
    ALPHABET,
    Lexicon,
    SpeechReader,
    SpeechReaderConfig,
    log_mel,
    spoken_text,
    word_spans,
)


def _columns(text: str, sure: float = 8.0, doubt: dict[int, dict[str, float]] | None = None) -> torch.Tensor:
    """Log-probabilities that spell `text` one character per column with blanks between, as a trained reader's
    best path would; `doubt[i]` spreads character i's column over several classes ("" is the blank)."""
    rows = []
    for index, char in enumerate(text):
        logits = torch.zeros(len(ALPHABET) + 1)
        for option, weight in (doubt or {}).get(index, {char: sure}).items():
            logits[ALPHABET.index(option) + 1 if option else 0] = weight
        rows += [logits, torch.zeros(len(ALPHABET) + 1).index_fill_(0, torch.tensor([0]), sure)]
    return torch.stack(rows).log_softmax(-1)


def test_spoken_text_is_what_a_listener_can_write():
    assert spoken_text("How do I kill 2 Python processes? It’s late—now!") == \
        "how do i kill two python processes it's late now"
    assert spoken_text("e-mail: 3 x!") == "e mail three x"
    assert spoken_text("?!") == ""


def test_word_spans_split_at_heard_spaces():
    log_probs = _columns("ab  cd e")
    spans = word_spans(log_probs)
    assert len(spans) == 3
    assert [spans[0][0], spans[-1][1]] == [0, len(log_probs)]


def test_a_non_word_becomes_the_near_word_the_reader_heard_not_the_commonest():
    reader = SpeechReader(SpeechReaderConfig(channels=8, hidden=8))
    reader._lexicon = Lexicon(["cards", "guards", "life", "knife", "the"])  # most frequent first
    # heard "gards": sure of "g" (never "c"), with a little "u" doubt after it, as a reader that was trained on the
    # spelling "guards" would have: "guards", though "cards" is commoner and as near
    gards = _columns("guards", doubt={1: {"": 6.0, "u": 4.0}})
    assert ctc_text(gards) == "gards"
    assert reader._word(gards) == "guards"
    assert reader._word(_columns("gards")) == "cards"  # no evidence for either spelling: the commoner word
    # heard "nife" with a little "k" doubt before it: "knife", though "life" is commoner and as near
    nife = _columns("knife", doubt={0: {"": 6.0, "k": 4.0}})
    assert ctc_text(nife) == "nife"
    assert reader._word(nife) == "knife"
    assert reader._word(_columns("the")) == "the" and reader._word(_columns("qzxv")) == "qzxv"  # no near word


def ctc_text(log_probs: torch.Tensor) -> str:
    from explorer.model.text_reader import ctc_greedy

    return ctc_greedy(log_probs, ALPHABET)


def test_lexicon_keeps_only_writable_words_in_frequency_order():
    lexicon = Lexicon(["the", "The", "don't", "café", "e-mail", "guards", "the"])
    assert lexicon.words == ["the", "don't", "guards"]
    assert [w for w, _ in lexicon.near("gards")] == ["guards"]


def test_log_mel_is_normalised_and_framed_every_10_ms():
    audio = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    features = log_mel(audio, 64)
    assert features.shape == (101, 64)
    assert abs(float(features.mean())) < 1e-4 and abs(float(features.std()) - 1) < 1e-3
    assert log_mel(np.zeros(10, dtype=np.float32)).shape == (3, 64)  # shorter than a window: padded, not an error


def test_speech_reader_round_trips_through_its_folder(tmp_path):
    torch.manual_seed(0)
    reader = SpeechReader(SpeechReaderConfig(channels=8, hidden=8)).eval()
    reader.save_pretrained(tmp_path)
    loaded = SpeechReader.from_pretrained(tmp_path)
    features = torch.randn(2, 50, 64)
    assert torch.equal(loaded(features), reader(features))
    assert reader(features).shape == (2, SpeechReader.columns(50), len(ALPHABET) + 1)
    (tmp_path / "speech_reader_config.json").write_text('{"kind": "other"}')
    with pytest.raises(ValueError, match="does not hold a speech reader"):
        SpeechReader.from_pretrained(tmp_path)


def test_the_shared_ctc_loop_learns_a_fixed_batch_and_logs_its_loss():
    """train_ctc (both readers' loop): on one repeated batch the CTC loss falls; the log has every `log_every`-th
    step and the last; the reader is left in eval mode."""
    from explorer.demo_model.ctc_training import train_ctc
    from explorer.demo_model.speech_train import _batch

    torch.manual_seed(0)
    reader = SpeechReader(SpeechReaderConfig(channels=16, hidden=16))
    rng = np.random.default_rng(0)
    pairs = [(torch.from_numpy(rng.standard_normal((40, 64), dtype=np.float32)).half(), "ab ba"),
             (torch.from_numpy(rng.standard_normal((30, 64), dtype=np.float32)).half(), "cab")]
    history = train_ctc(reader, lambda: _batch(pairs), steps=60, log_every=25)
    assert [h["step"] for h in history] == [0, 25, 50, 59]
    assert history[-1]["loss"] < history[0]["loss"] / 2
    assert not reader.training
