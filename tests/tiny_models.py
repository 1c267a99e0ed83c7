"""Tiny random-weight models of the real multimodal families, built offline.

Each builder writes a folder that `AutoModelForMultimodalLM` / `AutoProcessor` load exactly as they would load a
hub checkpoint: a config of the real architecture (2 layers, hidden 32–64), a byte-level BPE tokenizer trained
here on a few sentences, the family's real processor class *with the public preprocessing settings of a real
checkpoint* (tests/data/public_processors.json: image sizes, crops, tiling, pixel bounds, audio windows), and a
chat template shaped like the family's own. The vision encoders keep the real input resolution but use patches a
few times larger than the real ones, so a 336–1536 px image costs only 64 patches per view.
Nothing is downloaded; the weights are random, so these models test plumbing, never behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["FAMILIES", "PUBLIC_PROCESSORS", "build_tiny_model", "chatml_tokenizer"]

#: Public preprocessing settings of real checkpoints, by checkpoint name (see the file's "source" fields).
PUBLIC_PROCESSORS: dict[str, dict] = {
    name: entry for name, entry in json.loads(
        (Path(__file__).parent / "data" / "public_processors.json").read_text(encoding="utf-8")
    ).items() if not name.startswith("_")
}


def _public(checkpoint: str, part: str = "kwargs") -> dict:
    """The public processor kwargs of `checkpoint` (part "kwargs": image; "audio": the audio feature extractor)."""
    entry = PUBLIC_PROCESSORS[checkpoint]
    return dict(entry["audio"]["kwargs"]) if part == "audio" else dict(entry["kwargs"])

_CORPUS = [
    "Explain how to bake bread at home.",
    "The image shows a request. Respond to it.",
    "The audio is a spoken request. Respond to it.",
    "Write a short poem about the sea and the sky.",
    "How do I kill a Python process that hangs?",
    "Give me tips for a healthy breakfast and a good night of sleep.",
    "I can't help with that request. Sure, here are some general tips.",
    "user assistant system model",
] * 20

_QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{IMAGE}"
    "{% elif part['type'] == 'audio' %}{AUDIO}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_template(image: str = "", audio: str = "") -> str:
    return _QWEN_TEMPLATE.replace("{IMAGE}", image).replace("{AUDIO}", audio)


_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_IDEFICS_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _tokenizer(special: dict[str, str], chat_template: str, bos: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `_CORPUS`, with the family's special tokens as named attributes."""
    base = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if bos:
        base.append(bos)
    specials = base + [t for t in special.values() if t not in base]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=bos,
        extra_special_tokens=special,
    )
    fast.chat_template = chat_template
    return fast


def chatml_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """The tiny byte-level BPE with ChatML's special tokens (for models built in a test)."""
    return _tokenizer({}, chat_template)


def _ids(tokenizer: PreTrainedTokenizerFast, **names: str) -> dict[str, int]:
    return {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in names.items()}


def _text_config(model_type: str, vocab_size: int, hidden: int = 64, **extra: object) -> dict:
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        **extra,
    }


def _clip_vision(image_size: int = 336, patch: int = 42) -> dict:
    return {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": patch,
        "projection_dim": 32,
    }


def _build_llava(out: Path) -> None:
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    template = _qwen_template(image="<image>\n")
    tok = _tokenizer({"image_token": "<image>"}, template)
    cfg = LlavaConfig(
        text_config=_text_config("qwen2", len(tok)),
        vision_config=_clip_vision(),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    image_processor = CLIPImageProcessor(**_public("llava-hf/llava-1.5-7b-hf"))
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=42, chat_template=template,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)


def _build_llava_next(out: Path) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    template = _qwen_template(image="<image>\n")
    tok = _tokenizer({"image_token": "<image>"}, template)
    settings = _public("llava-hf/llava-v1.6-mistral-7b-hf")
    cfg = LlavaNextConfig(
        text_config=_text_config("qwen2", len(tok)),
        vision_config=_clip_vision(),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=settings["image_grid_pinpoints"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = LlavaNextImageProcessor(**settings)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=42, chat_template=template,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    LlavaNextForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)


def _qwen_vl_parts(version: str):
    special = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
    }
    template = _qwen_template(image="<|vision_start|><|image_pad|><|vision_end|>")
    tok = _tokenizer(special, template)
    ids = _ids(
        tok,
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )
    text = _text_config(
        f"{version}_text", len(tok), rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 4],
                                                      "rope_theta": 10000.0}
    )
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "in_chans": 3,
              "spatial_merge_size": 2, "patch_size": 14, "temporal_patch_size": 2, "out_hidden_size": 64,
              "intermediate_size": 64, "fullatt_block_indexes": [1], "window_size": 56}
    return tok, template, ids, text, vision


def _build_qwen_vl(out: Path, version: str) -> None:
    import transformers as tf

    tok, template, ids, text, vision = _qwen_vl_parts(version)
    if version == "qwen2_vl":
        config_cls, model_cls, proc_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        config_cls = tf.Qwen2_5_VLConfig
        model_cls, proc_cls = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    cfg = config_cls(text_config=text, vision_config=vision, pad_token_id=tok.pad_token_id, **ids)
    image_processor = tf.Qwen2VLImageProcessor(**_public("Qwen/Qwen2-VL-2B-Instruct"))
    video_processor = tf.Qwen2VLVideoProcessor()
    processor = proc_cls(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=template
    )
    model_cls(cfg).save_pretrained(out)
    processor.save_pretrained(out)


def _build_gemma3(out: Path) -> None:
    import transformers as tf

    special = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _tokenizer(special, _GEMMA_TEMPLATE, bos="<bos>")
    ids = _ids(tok, boi_token_id="<start_of_image>", eoi_token_id="<end_of_image>",
               image_token_id="<image_soft_token>")
    text = _text_config("gemma3_text", len(tok), head_dim=16, sliding_window=64, layer_types=None)
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 896, "patch_size": 112}
    cfg = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          pad_token_id=tok.pad_token_id, **ids)
    image_processor = tf.Gemma3ImageProcessor(**_public("google/gemma-3-4b-it"))
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                   chat_template=_GEMMA_TEMPLATE)
    tf.Gemma3ForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)


def _build_idefics_family(out: Path, family: str) -> None:
    """SmolVLM and Idefics3 share tokens, template and processor shape; only the classes (and SmolVLM's
    video processor) differ."""
    import transformers as tf

    prefix = {"smolvlm": "SmolVLM", "idefics3": "Idefics3"}[family]
    checkpoint = {"smolvlm": "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "idefics3": "HuggingFaceTB/SmolVLM-Instruct"}
    settings = _public(checkpoint[family])
    tile = settings["max_image_size"]["longest_edge"]
    grid = {f"row{r}col{c}": f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)}
    special = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
               "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>", **grid}
    tok = _tokenizer(special, _IDEFICS_TEMPLATE)
    vision = {"model_type": f"{family}_vision", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": tile, "patch_size": tile // 8}
    cfg = getattr(tf, f"{prefix}Config")(
        text_config=_text_config("llama", len(tok)), vision_config=vision, scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
    )
    image_processor = getattr(tf, f"{prefix}ImageProcessor")(**settings)
    extra = {"video_processor": tf.SmolVLMVideoProcessor()} if family == "smolvlm" else {}
    # 8×8 patches per view, merged 2×2 by scale_factor: 16 tokens per view
    processor = getattr(tf, f"{prefix}Processor")(image_processor=image_processor, tokenizer=tok, image_seq_len=16,
                                                  chat_template=_IDEFICS_TEMPLATE, **extra)
    getattr(tf, f"{prefix}ForConditionalGeneration")(cfg).save_pretrained(out)
    processor.save_pretrained(out)


def _whisper_features(checkpoint: str):
    """The checkpoint's public Whisper feature extractor, and the encoder length its window needs."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(**_public(checkpoint, "audio"))
    return extractor, extractor.nb_max_frames // 2


def _build_qwen2_audio(out: Path) -> None:
    import transformers as tf

    special = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
    template = _qwen_template(audio="Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n")
    tok = _tokenizer(special, template)
    features, positions = _whisper_features("Qwen/Qwen2-Audio-7B-Instruct")
    audio = {"model_type": "qwen2_audio_encoder", "num_mel_bins": features.feature_size, "encoder_layers": 2,
             "d_model": 32, "encoder_attention_heads": 4, "encoder_ffn_dim": 64, "max_source_positions": positions}
    cfg = tf.Qwen2AudioConfig(audio_config=audio, text_config=_text_config("qwen2", len(tok)),
                              audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"), pad_token_id=tok.pad_token_id)
    processor = tf.Qwen2AudioProcessor(feature_extractor=features, tokenizer=tok,
                                       chat_template=template)
    tf.Qwen2AudioForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)


_OMNI_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_qwen2_5_omni(out: Path) -> None:
    """Qwen2.5-Omni without speech output: only the thinker (text, vision and audio encoders) has weights.

    `Qwen2_5OmniForConditionalGeneration.from_pretrained` always reads `spk_dict.pt` (the talker's speaker
    table), even with `enable_audio_output=False`, so a one-speaker table is written as well.
    """
    import transformers as tf

    special = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    tok = _tokenizer(special, _OMNI_TEMPLATE)
    ids = _ids(
        tok,
        image_token_index="<|IMAGE|>",
        audio_token_index="<|AUDIO|>",
        video_token_index="<|VIDEO|>",
        vision_start_token_id="<|vision_bos|>",
        vision_end_token_id="<|vision_eos|>",
        audio_start_token_id="<|audio_bos|>",
        audio_end_token_id="<|audio_eos|>",
    )
    text = _text_config(
        "qwen2_5_omni_text", len(tok),
        rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id,
    )
    vision = {"model_type": "qwen2_5_omni_vision_encoder", "depth": 2, "hidden_size": 64, "num_heads": 4,
              "in_channels": 3, "spatial_merge_size": 2, "patch_size": 14, "temporal_patch_size": 2,
              "out_hidden_size": 64, "intermediate_size": 64, "fullatt_block_indexes": [1], "window_size": 56}
    features, _ = _whisper_features("Qwen/Qwen2.5-Omni-7B")
    # the real encoder attends in windows of 2 × n_window frames and has 1500 positions, whatever the window
    audio = {"model_type": "qwen2_5_omni_audio_encoder", "num_mel_bins": features.feature_size, "encoder_layers": 2,
             "d_model": 32, "encoder_attention_heads": 4, "encoder_ffn_dim": 64, "max_source_positions": 1500,
             "n_window": 100, "output_dim": 64}
    thinker = tf.Qwen2_5OmniThinkerConfig(
        text_config=text, vision_config=vision, audio_config=audio,
        user_token_id=tok.convert_tokens_to_ids("user"), **ids,
    )
    cfg = tf.Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), enable_audio_output=False)
    image_processor = tf.Qwen2VLImageProcessor(**_public("Qwen/Qwen2.5-Omni-7B"))
    video_processor = tf.Qwen2VLVideoProcessor()
    processor = tf.Qwen2_5OmniProcessor(
        image_processor=image_processor, video_processor=video_processor, feature_extractor=features,
        tokenizer=tok, chat_template=_OMNI_TEMPLATE,
    )
    tf.Qwen2_5OmniForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)
    torch.save({"Chelsie": {"bos_token": tok.convert_tokens_to_ids("<|im_start|>")}}, out / "spk_dict.pt")


def _build_reading_lm(out: Path) -> None:
    """This project's own family (explorer.model.reading_lm): a Llama with image and audio projectors, a ChatML tokenizer,
    and character readers whose random weights are biased to read one letter (plumbing, never reading)."""
    from explorer.model.reading_lm import ReadingLMConfig, ReadingLMForCausalLM
    from explorer.model.reading_processor import CHAT_TEMPLATE, ReadingProcessor
    from explorer.model.speech_reader import ALPHABET, SpeechReader, SpeechReaderConfig
    from explorer.model.text_reader import CHARSET, ReaderConfig, TextReader

    tok = chatml_tokenizer(CHAT_TEMPLATE)
    text = {k: v for k, v in _text_config("llama", len(tok)).items() if k != "model_type"}
    cfg = ReadingLMConfig(media_modalities=["image", "audio"], pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **text)
    model = ReadingLMForCausalLM(cfg)
    reader = TextReader(ReaderConfig(channels=8, hidden=8))
    ears = SpeechReader(SpeechReaderConfig(channels=8, hidden=8, lexicon_words=100))
    with torch.no_grad():
        model.media_projectors["image"].bias.add_(torch.randn(cfg.hidden_size))  # the image drift
        model.media_projectors["audio"].bias.add_(torch.randn(cfg.hidden_size))  # the audio drift
        reader.classes.bias[CHARSET.index("a") + 1] += 50.0
        ears.classes.bias[ALPHABET.index("a") + 1] += 50.0
    model.save_pretrained(out)
    ReadingProcessor(tok, reader.eval(), speech_reader=ears.eval()).save_pretrained(out)


FAMILIES: dict[str, Callable[[Path], None]] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": lambda out: _build_qwen_vl(out, "qwen2_vl"),
    "qwen2_5_vl": lambda out: _build_qwen_vl(out, "qwen2_5_vl"),
    "gemma3": _build_gemma3,
    "smolvlm": lambda out: _build_idefics_family(out, "smolvlm"),
    "idefics3": lambda out: _build_idefics_family(out, "idefics3"),
    "qwen2_audio": _build_qwen2_audio,
    "qwen2_5_omni": _build_qwen2_5_omni,
    "sge_reading_lm": _build_reading_lm,
}


def build_tiny_model(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random-weight model of `family` to `out` (created) and return the folder."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    FAMILIES[family](out)
    return out
