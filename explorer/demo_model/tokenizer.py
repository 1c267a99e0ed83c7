"""In-house byte-level BPE tokenizer with a ChatML template, shared by the image and audio demo models.

Why a whitespace pre-tokenizer: the demo model reads a 4x4 grid with one word per cell (and one speech slot
per word), so a word *including its punctuation* ("garage?") must be exactly one token, in both forms it
takes in a prompt (sentence-initial "How" and mid-sentence " do"). Training BPE to convergence on every
corpus word in both forms guarantees that; anything else falls back to bytes (ByteLevel alphabet), so free
typing still works.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .config import (
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_TOKEN,
    IM_END,
    IM_START,
    IMAGE_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
)

__all__ = ["CHAT_TEMPLATE", "build_tokenizer", "words_not_single_token"]

# One template for the tokenizer and both processors: ChatML without a system prompt. An image becomes
# "<image>\n" before the text, an audio clip "<|audio_bos|><|AUDIO|><|audio_eos|>\n"; the processors expand
# the single placeholder into one token per visual patch / audio frame.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{% elif part['type'] == 'audio' %}{{ '" + AUDIO_BOS + AUDIO_TOKEN + AUDIO_EOS + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '" + IM_END + "\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
)


def _training_lines(texts: Iterable[str]) -> list[str]:
    """Each text as-is plus each word alone (sentence-initial form) and after a space (mid-sentence form)."""
    lines: list[str] = []
    words: set[str] = {"user", "assistant", "system"}  # ChatML role names, one token each
    for text in texts:
        lines.append(text)
        words.update(text.split())
    for word in sorted(words):
        lines.append(word)
        lines.append(" " + word)
    return lines


def build_tokenizer(texts: Iterable[str], max_vocab: int = 32000) -> PreTrainedTokenizerFast:
    """Train the BPE on `texts` until every word is one token, and wrap it as a fast HF tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?[^\s]+|\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max_vocab,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _training_lines(texts)
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "audio_token": AUDIO_TOKEN,
                              "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS},
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def words_not_single_token(tokenizer: PreTrainedTokenizerFast, words: Iterable[str]) -> list[str]:
    """Words that do not encode to exactly one token in both their initial and mid-sentence form."""
    bad = []
    for word in words:
        for form in (word, " " + word):
            if len(tokenizer.encode(form, add_special_tokens=False)) != 1:
                bad.append(form)
    return bad
