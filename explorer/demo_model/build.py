"""Build the demo model's two standard transformers models around one shared language model.

Why standard classes: the engine loads the demo model exactly like a real one (`AutoModelForMultimodalLM`,
`AutoProcessor`), so every code path the demo exercises is the one real models use. The image model is a
`LlavaForConditionalGeneration` (tiny CLIP tower, one patch = one word cell = one visual token), the audio model
a `Qwen2AudioForConditionalGeneration` (tiny Whisper-style encoder, `DemoConfig.audio_tokens_per_slot` audio tokens per word slot).
Both hold the *same* Qwen2 language-model modules in memory, so text hidden states are identical in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioEncoderConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    WhisperFeatureExtractor,
)

from .config import AUDIO_TOKEN, IMAGE_TOKEN, DemoConfig
from .tokenizer import CHAT_TEMPLATE

__all__ = ["DemoModels", "build_models", "build_processors", "count_parameters", "share_language_model"]

# Normalisation that maps the white background to 0 and ink to -2: only the glyphs carry signal, so a random-init
# tower does not start out dominated by the (constant) page.
_PIXEL_MEAN = [1.0, 1.0, 1.0]
_PIXEL_STD = [0.5, 0.5, 0.5]


@dataclass
class DemoModels:
    """The image and audio models (sharing one language model) and their processors."""

    image: LlavaForConditionalGeneration
    audio: Qwen2AudioForConditionalGeneration
    image_processor: LlavaProcessor
    audio_processor: Qwen2AudioProcessor


def _text_config(cfg: DemoConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,  # Qwen2-Audio cannot save tied weights
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def build_processors(cfg: DemoConfig, tokenizer: PreTrainedTokenizerFast) -> tuple[LlavaProcessor, Qwen2AudioProcessor]:
    """LLaVA processor (`image_size` px, no crop: the grid is already square) and Qwen2-Audio processor."""
    image_proc = CLIPImageProcessor(
        size={"height": cfg.image_size, "width": cfg.image_size},
        do_resize=True,
        do_center_crop=False,
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=_PIXEL_MEAN,
        image_std=_PIXEL_STD,
    )
    llava_proc = LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tokenizer,
        patch_size=cfg.patch,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    features = WhisperFeatureExtractor(
        feature_size=cfg.mel_bins,
        sampling_rate=cfg.sampling_rate,
        hop_length=cfg.audio_hop,
        chunk_length=cfg.audio_chunk_seconds,
        n_fft=cfg.audio_n_fft,
    )
    audio_proc = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    return llava_proc, audio_proc


def build_models(cfg: DemoConfig, tokenizer: PreTrainedTokenizerFast) -> DemoModels:
    """Random-init image and audio models (seeded by the caller) with one shared language model."""
    text = _text_config(cfg, tokenizer)
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_intermediate,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch,
        num_channels=3,
        projection_dim=cfg.vision_hidden,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llava_cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=cfg.grid_cells,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    encoder = Qwen2AudioEncoderConfig(
        num_mel_bins=cfg.mel_bins,
        encoder_layers=cfg.audio_layers,
        encoder_attention_heads=cfg.audio_heads,
        encoder_ffn_dim=cfg.audio_intermediate,
        d_model=cfg.audio_hidden,
        max_source_positions=cfg.audio_frames // 2,
    )
    audio_cfg = Qwen2AudioConfig(
        audio_config=encoder,
        text_config=_text_config(cfg, tokenizer),
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        tie_word_embeddings=False,
    )
    for c in (llava_cfg, audio_cfg):
        c.eos_token_id = tokenizer.eos_token_id
        c.pad_token_id = tokenizer.pad_token_id
    image_model = LlavaForConditionalGeneration(llava_cfg)
    audio_model = Qwen2AudioForConditionalGeneration(audio_cfg)
    share_language_model(image_model, audio_model)
    for model in (image_model, audio_model):
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = None
    image_proc, audio_proc = build_processors(cfg, tokenizer)
    return DemoModels(image_model, audio_model, image_proc, audio_proc)


def share_language_model(image_model: LlavaForConditionalGeneration, audio_model: Qwen2AudioForConditionalGeneration) -> None:
    """Point the audio model's language model and LM head at the image model's modules (one set of weights)."""
    audio_model.model.language_model = image_model.model.language_model
    audio_model.lm_head = image_model.lm_head


def count_parameters(module: torch.nn.Module) -> int:
    """Unique parameters of a module (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
