"""A reading LM: a causal LM whose image and speech inputs arrive as *read* tokens shifted by a modality projector.

Why this family exists: the next demo model (issue 22) is a real small LM (SmolLM2-135M-Instruct, Llama
architecture) made into a toy multimodal model. Its processor reads a typographic image or a spoken request into
the LM's own tokens (a character reader, docs/demo-prototype.md row 4); the model then embeds those tokens and
passes them through a learned per-modality projector before the decoder. The projector is the toy's modality
drift: the same request read from an image lands elsewhere in the residual stream than typed text, which is the
geometry the paper studies. It is a toy and says so: a real MLLM's vision tower does not transcribe.

`mm_token_type_ids` marks each position: 0 text, 1 image, 2 audio (transformers' generation utilities slice it per
step and extend it with zeros for generated tokens, so a generated token is always text). Without it, or with
all zeros, the model is exactly its Llama base.

The family is registered with transformers' Auto classes on import (`register`), so `AutoConfig` /
`AutoModelForMultimodalLM` load a saved folder without `trust_remote_code`: the code is this package's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["MODALITY_TYPE_IDS", "ReadingLMConfig", "ReadingLMForCausalLM", "register"]


#: `mm_token_type_ids` value of each modality.
MODALITY_TYPE_IDS = {"text": 0, "image": 1, "audio": 2}


class ReadingLMConfig(LlamaConfig):
    """A Llama config, plus the media modalities that have a projector."""

    model_type = "sge_reading_lm"

    def __init__(self, media_modalities: tuple[str, ...] | list[str] = ("image", "audio"), **kwargs: Any) -> None:
        unknown = [m for m in media_modalities if m not in MODALITY_TYPE_IDS or m == "text"]
        if unknown:
            raise ValueError(f"media_modalities must be among image, audio; got {unknown}")
        self.media_modalities = list(media_modalities)
        super().__init__(**kwargs)


class ReadingLMForCausalLM(LlamaForCausalLM):
    """Llama + one affine projector per media modality, applied to the embeddings of that modality's positions."""

    config_class = ReadingLMConfig

    def __init__(self, config: ReadingLMConfig) -> None:
        super().__init__(config)
        size = config.hidden_size
        self.media_projectors = nn.ModuleDict({m: nn.Linear(size, size) for m in config.media_modalities})
        for projector in self.media_projectors.values():  # identity until trained: read tokens = typed tokens
            nn.init.eye_(projector.weight)
            nn.init.zeros_(projector.bias)

    def media_embeddings(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, with each media position passed through its modality's projector."""
        embeds = self.get_input_embeddings()(input_ids)
        for modality, projector in self.media_projectors.items():
            where = mm_token_type_ids == MODALITY_TYPE_IDS[modality]
            if where.any():
                embeds = torch.where(where[..., None], projector(embeds), embeds)
        unknown = (mm_token_type_ids != 0) & ~torch.isin(
            mm_token_type_ids, torch.tensor([MODALITY_TYPE_IDS[m] for m in self.media_projectors],
                                            device=mm_token_type_ids.device))
        if unknown.any():
            raise ValueError(f"mm_token_type_ids has values this model has no projector for: "
                             f"{sorted(set(mm_token_type_ids[unknown].tolist()))}")
        return embeds

    def forward(self, input_ids: torch.Tensor | None = None, mm_token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if mm_token_type_ids is not None and input_ids is not None and inputs_embeds is None:
            if mm_token_type_ids.shape != input_ids.shape:
                raise ValueError(f"mm_token_type_ids {tuple(mm_token_type_ids.shape)} must match input_ids "
                                 f"{tuple(input_ids.shape)}")
            inputs_embeds, input_ids = self.media_embeddings(input_ids, mm_token_type_ids), None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


def register() -> None:
    """Make AutoConfig and the Auto model classes know the family (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMultimodalLM

    try:
        AutoConfig.register(ReadingLMConfig.model_type, ReadingLMConfig)
    except ValueError:  # already registered in this process
        return
    AutoModelForCausalLM.register(ReadingLMConfig, ReadingLMForCausalLM)
    AutoModelForMultimodalLM.register(ReadingLMConfig, ReadingLMForCausalLM)


register()
