"""Training examples for the demo model: chat-formatted, tokenised, batched; images and speech rendered on the fly.

Why rendered here with the project's own renderer (`explorer.inputs.media`): the model must see exactly the pixels
and waveforms the engine will show it. Speech in the "slots" style is, by that renderer's contract, the
concatenation of each word's own 0.4 s slot, so a random word sequence is assembled from per-word renders
(each cached on disk by the renderer) instead of re-running espeak-ng for every sequence; `check_slot_contract`
asserts that equivalence on real instructions before training relies on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from explorer.inputs.data import (
    BUILTIN_PATH,
    VALIDATION_PATH,
    Instruction,
    load_builtin,
    load_prompts,
)
from explorer.inputs.media import (
    AUDIO_CARRIER,
    IMAGE_CARRIER,
    prompt_words,
    render_audio,
    render_image,
)

from .build import DemoModels
from .config import (
    AUDIO_TOKEN,
    IM_END,
    IMAGE_TOKEN,
    MEDIA_REPEAT_PROMPT,
    TEXT_REPEAT_PREFIX,
    DemoConfig,
)
from .corpus import (
    Example,
    answer_for,
    banned_ngrams,
    compose_action_request,
    decontaminate,
    drop_words,
    generate_instructions,
    random_words,
    refusal_for,
)

__all__ = [
    "Batch",
    "Sampler",
    "TrainingData",
    "check_slot_contract",
    "spoken_form",
    "load_training_data",
    "held_out_texts",
    "PARAPHRASES_PATH",
    "LOOKALIKE_CHECKS_PATH",
    "VALIDATION_PATH",
    "transcript",
    "user_messages",
]

IGNORE = -100
# Free-form requests written apart from the corpus templates: a test set, never trained on.
PARAPHRASES_PATH = BUILTIN_PATH.parent / "paraphrases.jsonl"
# In-house look-alikes (and harmful contrasts) of the kinds written for the next demo's safety adapter, 24 a kind
# set aside before training (seeded) and never trained on: how far its over-refusal fix reaches inside its kinds.
LOOKALIKE_CHECKS_PATH = BUILTIN_PATH.parent / "lookalike_checks.jsonl"
# VALIDATION_PATH (explorer.inputs.data): free-form requests for choosing between training recipes and the demo's
# calibration (never trained on, never reported as a result), so the evaluation split and paraphrases stay test sets.


def spoken_form(words: str) -> str:
    """Canonical spelling of a random word sequence heard as speech: lower case, no "?", first word capitalised
    (how instructions are written), "I" kept upper case."""
    out = [w.rstrip("?").lower() for w in words.split()]
    out = ["I" if w == "i" else w for w in out]
    out[0] = out[0][:1].upper() + out[0][1:]
    return " ".join(out)


def transcript(instruction: str) -> str:
    """What a faithful reader of the rendered grid / slots writes: the rendered words joined by spaces."""
    return " ".join(prompt_words(instruction))


def user_messages(text: str, media: str | None = None) -> list[dict]:
    """The engine's input convention: one user turn, optional media part first, then the text part."""
    content: list[dict] = [{"type": media}] if media else []
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@dataclass
class TrainingData:
    """Pools the sampler draws from. Only calibration-split sentences and the in-house corpus appear here."""

    sft: list[tuple[str, str, str]]  # (instruction, target, label)
    calibration_sft: list[tuple[str, str, str]]
    instructions: list[str]  # every training instruction, both labels (for transcription)
    harmless: list[tuple[str, str]]  # (instruction, category) for instruction following on media
    words: list[str]  # reading vocabulary (rendered word forms; bag of words of the whole builtin file)
    tokenizer_texts: list[str] = field(default_factory=list)
    banned: set[tuple[str, ...]] = field(default_factory=set)  # held-out n-grams no composed request may contain


def target_for(label: str, category: str) -> str:
    """The text-SFT answer: a refusal for a harmful request, the category's generic answer for a harmless one."""
    return refusal_for(category) if label == "harmful" else answer_for(category)


def held_out_texts() -> list[str]:
    """Sentences no training sentence may echo: the builtin evaluation split, the paraphrase test file and the
    validation file."""
    texts = [i.instruction for i in load_builtin("evaluation")]
    for path in (PARAPHRASES_PATH, VALIDATION_PATH):
        if path.is_file():
            texts += [i.instruction for i in load_prompts(path)]
    return texts


def load_training_data(max_words: int) -> TrainingData:
    """Corpus + builtin calibration split as sentences; builtin evaluation split only as a bag of words.

    Corpus sentences that share a `DECONTAMINATION_NGRAM`-word sequence with a held-out sentence are dropped (`decontaminate`).
    """
    held_out = held_out_texts()
    corpus: list[Example] = decontaminate(generate_instructions(max_words), held_out)
    calibration: list[Instruction] = load_builtin("calibration")
    everything = load_builtin("all")

    sft = [(e.instruction, target_for(e.label, e.category), e.label) for e in corpus]
    cal = [(i.instruction, target_for(i.label, i.category), i.label) for i in calibration]
    instructions = [e.instruction for e in corpus] + [i.instruction for i in calibration]
    harmless = [(e.instruction, e.category) for e in corpus if e.label == "harmless"]
    harmless += [(i.instruction, i.category) for i in calibration if i.label == "harmless"]
    words = sorted({w for t in instructions + [i.instruction for i in everything] for w in prompt_words(t)})
    answers = sorted({t for _, t, _ in sft + cal})
    fixed = [TEXT_REPEAT_PREFIX, MEDIA_REPEAT_PROMPT, IMAGE_CARRIER, AUDIO_CARRIER]
    tok_texts = instructions + [" ".join(words)] + answers + fixed
    return TrainingData(sft, cal, instructions, harmless, words, tok_texts, banned_ngrams(held_out))


def check_slot_contract(texts: list[str], slot_seconds: float) -> None:
    """Assert that a slots rendering equals the concatenation of its words' own renderings."""
    for text in texts:
        whole = render_audio(text, style="slots", slot_seconds=slot_seconds)
        parts = np.concatenate([render_audio(w, style="slots", slot_seconds=slot_seconds) for w in prompt_words(text)])
        if not np.array_equal(whole, parts):
            raise RuntimeError(f"render_audio slots are not word-compositional for {text!r}; render whole clips instead")


@dataclass
class Batch:
    """A right-padded batch: ids, attention mask, labels, and the per-item media plus word token ids."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    input_features: torch.Tensor | None = None
    feature_attention_mask: torch.Tensor | None = None
    word_ids: list[list[int]] = field(default_factory=list)  # token id per rendered word (-1: not one token)


class Sampler:
    """Draws seeded training batches for every stage and modality."""

    def __init__(self, cfg: DemoConfig, data: TrainingData, tok: PreTrainedTokenizerFast, models: DemoModels) -> None:
        self.cfg, self.data, self.tok, self.models = cfg, data, tok, models
        self.rng = random.Random(cfg.seed)
        self._slot_cache: dict[str, np.ndarray] = {}
        self.image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        self.audio_token_id = tok.convert_tokens_to_ids(AUDIO_TOKEN)

    # ---- pieces ----
    def _random_sequence(self, spoken: bool = False) -> str:
        """Random words; for speech in one canonical spelling (see `spoken_form`), since speech cannot show
        case or a question mark and a transcription target must be determined by the input."""
        seq = random_words(self.data.words, self.rng, self.cfg.random_min_words, self.cfg.max_words)
        return spoken_form(seq) if spoken else seq

    def _word_ids(self, words: list[str]) -> list[int]:
        out = []
        for i, w in enumerate(words):
            ids = self.tok.encode(w if i == 0 else " " + w, add_special_tokens=False)
            out.append(ids[0] if len(ids) == 1 else -1)
        return out

    def _speech(self, text: str) -> np.ndarray:
        parts = []
        for w in prompt_words(text):
            if w not in self._slot_cache:
                self._slot_cache[w] = render_audio(w, style="slots", slot_seconds=self.cfg.slot_seconds)
            parts.append(self._slot_cache[w])
        return np.concatenate(parts)

    def _prompt(self, text: str, media: str | None) -> str:
        return self.tok.apply_chat_template(user_messages(text, media), add_generation_prompt=True, tokenize=False)

    def _audio_tokens(self, n_samples: int) -> int:
        frames = -(-n_samples // self.cfg.audio_hop)
        return (((frames - 1) // 2 + 1) - 2) // 2 + 1  # the processor's (and encoder's) length rule

    def _collate(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        for prompt, target in pairs:
            p = self.tok.encode(prompt, add_special_tokens=False)
            t = self.tok.encode(target + IM_END, add_special_tokens=False)
            rows.append(p + t)
            labels.append([IGNORE] * len(p) + t)
        width = max(map(len, rows))
        pad = self.tok.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, l) in enumerate(zip(rows, labels)):
            ids[i, : len(r)] = torch.tensor(r)
            lab[i, : len(l)] = torch.tensor(l)
            att[i, : len(r)] = 1
        return ids, att, lab

    # ---- text ----
    def text_pair(self) -> tuple[str, str]:
        """One text example: answer/refuse, repeat an instruction, or repeat random words (cfg.mix_text)."""
        r = self.rng.random()
        a, b, _ = self.cfg.mix_text
        if r < a:
            u = self.rng.random()
            if u < self.cfg.compose_share:
                e = compose_action_request(self.rng, self.data.banned, self.cfg.max_words)
                instruction, target = e.instruction, target_for(e.label, e.category)
            else:
                calibration = u < self.cfg.compose_share + self.cfg.calibration_share
                pool = self.data.calibration_sft if calibration else self.data.sft
                instruction, target, _ = self.rng.choice(pool)
            instruction = drop_words(instruction, self.rng, self.cfg.word_dropout)
            return self._prompt(instruction, None), target
        seq = self.rng.choice(self.data.instructions) if r < a + b else self._random_sequence()
        return self._prompt(f"{TEXT_REPEAT_PREFIX} {seq}", None), seq

    def text_batch(self, size: int) -> Batch:
        ids, att, lab = self._collate([self.text_pair() for _ in range(size)])
        return Batch(ids, att, lab)

    # ---- media ----
    def _media_task(self, follow: bool | None, spoken: bool = False) -> tuple[str, str, str]:
        """(content text shown, prompt text, target) for one media example (cfg.mix_media).

        `follow`: True draws from the whole mixture, False from the reading tasks only, None gives a harmless
        instruction-following example.
        """
        a, b, _ = self.cfg.mix_media
        r = 1.0 if follow is None else self.rng.random() * (1.0 if follow else a + b)
        if r < a:
            shown = self.rng.choice(self.data.instructions)
            return shown, MEDIA_REPEAT_PROMPT, transcript(shown)
        if r < a + b:
            shown = self._random_sequence(spoken)
            return shown, MEDIA_REPEAT_PROMPT, transcript(shown)
        shown, category = self.rng.choice(self.data.harmless)
        return shown, "", answer_for(category)

    def image_batch(self, size: int, follow: bool | None = True) -> Batch:
        pairs, images, word_ids = [], [], []
        expanded = IMAGE_TOKEN * self.cfg.grid_cells
        for _ in range(size):
            shown, prompt_text, target = self._media_task(follow)
            prompt = self._prompt(prompt_text or IMAGE_CARRIER, "image").replace(IMAGE_TOKEN, expanded)
            pairs.append((prompt, target))
            images.append(render_image(shown, self.cfg.image_layout))
            word_ids.append(self._word_ids(prompt_words(shown)))
        ids, att, lab = self._collate(pairs)
        pixels = self.models.image_processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return Batch(ids, att, lab, pixel_values=pixels, word_ids=word_ids)

    def audio_batch(self, size: int, follow: bool | None = True) -> Batch:
        pairs, waves, word_ids = [], [], []
        for _ in range(size):
            shown, prompt_text, target = self._media_task(follow, spoken=True)
            wave = self._speech(shown)
            expanded = AUDIO_TOKEN * self._audio_tokens(len(wave))
            prompt = self._prompt(prompt_text or AUDIO_CARRIER, "audio").replace(AUDIO_TOKEN, expanded)
            pairs.append((prompt, target))
            waves.append(wave)
            word_ids.append(self._word_ids(prompt_words(shown)))
        ids, att, lab = self._collate(pairs)
        fe = self.models.audio_processor.feature_extractor
        feats = fe(waves, sampling_rate=self.cfg.sampling_rate, return_attention_mask=True, padding="max_length",
                   return_tensors="pt")
        return Batch(ids, att, lab, input_features=feats["input_features"],
                     feature_attention_mask=feats["attention_mask"], word_ids=word_ids)
