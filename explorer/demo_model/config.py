"""One config for the built-in demo model: architecture, data mixture and training schedule.

Why one dataclass: every number that shapes the toy (layer sizes, token counts per word, step counts,
mixture weights) lives here, so the model card can print it and a test can shrink it (`tiny()`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from explorer.core.vocab import SAMPLE_RATE
from explorer.inputs.media import GridLayout

__all__ = [
    "DemoConfig",
    "SPECIAL_TOKENS",
    "IMAGE_TOKEN",
    "AUDIO_TOKEN",
    "AUDIO_BOS",
    "AUDIO_EOS",
    "IM_START",
    "IM_END",
    "PAD_TOKEN",
    "TEXT_REPEAT_PREFIX",
    "MEDIA_REPEAT_PROMPT",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)

# Transcription prompts (benign tasks the model is trained on in every modality).
TEXT_REPEAT_PREFIX = "Repeat the request:"
MEDIA_REPEAT_PROMPT = "Repeat the request."


@dataclass(frozen=True)
class DemoConfig:
    """Everything that defines one demo-model training run.

    Audio geometry: a 0.4 s word slot at 16 kHz with `audio_hop` = 400 samples spans 16 mel frames; the
    Qwen2-Audio encoder halves twice (conv stride 2, then average pooling 2), so each word slot becomes
    `16 / 4 = 4` audio tokens. `audio_chunk_seconds` must be an integer (WhisperFeatureExtractor multiplies it
    by the sampling rate) and >= 16 slots x 0.4 s.
    """

    seed: int = 0
    # --- language model (Qwen2 architecture) ---
    hidden: int = 192
    layers: int = 6
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    max_positions: int = 256
    # --- vision tower (CLIP) + LLaVA projector ---
    image_size: int = 256
    patch: int = 64  # = one word cell of the grid: one visual token per word
    font_size: int = 11  # ~6.6 px per monospace letter: 9 letters fit a 64 px cell at full size
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 256
    # --- audio tower (Qwen2-Audio / Whisper-style encoder) ---
    sampling_rate: int = SAMPLE_RATE
    slot_seconds: float = 0.4
    audio_hop: int = 400  # 25 ms frames: 16 per 0.4 s word slot -> 4 audio tokens per word
    audio_n_fft: int = 400
    mel_bins: int = 80
    audio_chunk_seconds: int = 7
    audio_hidden: int = 128
    audio_layers: int = 2
    audio_heads: int = 4
    audio_intermediate: int = 256
    # --- corpus ---
    max_words: int = 16
    random_min_words: int = 3
    # --- stage 1: text SFT ---
    steps_text: int = 3000
    batch_text: int = 48
    lr_text: float = 2e-3
    mix_text: tuple[float, float, float] = (0.6, 0.2, 0.2)  # answer/refuse, repeat instruction, repeat random words
    # Of the answer/refuse examples: freshly composed action requests (corpus.compose_action_request), builtin
    # calibration sentences, and the rest from the fixed corpus.
    compose_share: float = 0.3
    calibration_share: float = 0.3
    word_dropout: float = 0.05  # per-word drop rate of answer/refuse instructions (at most 1 word, corpus.drop_words)
    # --- stage 2: modality alignment ---
    steps_align: int = 400  # phase A: LM frozen, towers learn to read (transcription + aux)
    steps_modality: int = 3000  # phase B: harmless instruction following joins the reading tasks
    batch_image: int = 16
    batch_audio: int = 16
    batch_replay: int = 16
    lr_tower: float = 2e-3
    lr_lm_modality: float = 1e-4
    # False: the LM stays frozen through stage 2 (LLaVA's feature-alignment recipe; no text replay needed),
    # so text behaviour is exactly stage 1's and the media drift is all in the towers' outputs.
    tune_lm_in_modality: bool = True
    # False (default): the LM learns to *read* media (transcription) but harmless media instruction following
    # updates the towers only, so what makes media prompts comply is an input-side drift (the paper's modality
    # drift), not a media-specific rewrite of the LM; the follow examples are a separate sub-batch per step.
    # Measured: with True, harmful images sat *below* harmless ones on the text refusal axis (AUROC 0.38-0.48,
    # cos(r, r^image) = -0.54 at layer 0), an inversion no drift subtraction can undo; with False, 0.70-0.72
    # and +0.69 (compression, as in the paper).
    lm_learns_following: bool = False
    # transcribe instruction, transcribe random words, follow harmless. Random words dominate so that reading
    # is copying, not recalling templates (run 1 with 0.35/0.30/0.35 'autocorrected' toward training templates).
    mix_media: tuple[float, float, float] = (0.2, 0.5, 0.3)
    aux_weight: float = 1.0
    # Stage-2 text replay also matches the stage-1 LM's answer distribution (KL, Learning-without-Forgetting
    # style), so that tuning the LM to read media does not move its text refusal boundary on unseen requests.
    distill_weight: float = 1.0
    aux_temperature: float = 0.05  # cosine-softmax temperature of the reading loss
    warmup_steps: int = 50
    weight_decay: float = 0.0
    threads: int = 2
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch={self.patch}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden={self.hidden}, heads={self.heads}, kv_heads={self.kv_heads} do not divide")
        if self.audio_chunk_seconds * self.sampling_rate < self.max_words * self.slot_seconds * self.sampling_rate:
            raise ValueError(f"audio_chunk_seconds={self.audio_chunk_seconds} is shorter than 16 slots")
        frames_per_slot = self.slot_seconds * self.sampling_rate / self.audio_hop
        if abs(frames_per_slot - round(frames_per_slot)) > 1e-9 or round(frames_per_slot) % 4:
            raise ValueError(
                f"slot_seconds={self.slot_seconds} with audio_hop={self.audio_hop} gives {frames_per_slot} frames "
                "per slot; it must be a multiple of 4 (the encoder downsamples by 4)"
            )
        if self.compose_share + self.calibration_share > 1:
            raise ValueError("compose_share + calibration_share must be at most 1")
        if abs(sum(self.mix_text) - 1) > 1e-6 or abs(sum(self.mix_media) - 1) > 1e-6:
            raise ValueError(f"mixtures must sum to 1: mix_text={self.mix_text}, mix_media={self.mix_media}")

    @property
    def audio_tokens_per_slot(self) -> int:
        """Audio tokens the encoder emits per word slot (frames per slot / 4)."""
        return round(self.slot_seconds * self.sampling_rate / self.audio_hop) // 4

    @property
    def audio_frames(self) -> int:
        """Mel frames of one padded clip (the encoder's fixed input length)."""
        return self.audio_chunk_seconds * self.sampling_rate // self.audio_hop

    @property
    def image_layout(self) -> GridLayout:
        """The word grid the image tower reads: one `patch` x `patch` cell per word, no margin."""
        side = self.image_size // self.patch
        return GridLayout(cols=side, rows=side, cell_width=self.patch, cell_height=self.patch,
                          font_size=self.font_size, margin=0)

    @property
    def grid_cells(self) -> int:
        """Word cells (= visual tokens) of one rendered image."""
        return (self.image_size // self.patch) ** 2

    def tiny(self) -> DemoConfig:
        """A seconds-long smoke configuration with the same code paths."""
        return replace(
            self,
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=2,
            intermediate=128,
            vision_hidden=32,
            vision_layers=1,
            vision_intermediate=64,
            audio_hidden=32,
            audio_layers=1,
            audio_intermediate=64,
            steps_text=3,
            batch_text=4,
            steps_align=2,
            steps_modality=2,
            batch_image=2,
            batch_audio=2,
            batch_replay=2,
            warmup_steps=1,
            log_every=1,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view for the model card and the saved training log."""
        return asdict(self)
