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

**A folder on a pinned base** ships only the project's parts: `config.json`, `pinned_base.json` (the base's package,
version, file and SHA-256: explorer.model.pinned_base), `media_projectors.safetensors`, and optionally a peft LoRA
(`adapter_config.json` + `adapter_model.safetensors`) that is merged into the base's weights on loading.
`from_pretrained` assembles such a folder (`assemble_on_pinned_base`) and loads any other folder as transformers
does, so the engine's one loader serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from explorer.model.models import ModelLoadError
from explorer.model.pinned_base import PINNED_BASE_FILE, PinnedBase

__all__ = ["MODALITY_TYPE_IDS", "PROJECTORS_FILE", "ReadingLMConfig", "ReadingLMForCausalLM",
           "assemble_on_pinned_base", "register", "write_on_pinned_base"]


#: The projectors' weights in a folder on a pinned base (the only full tensors such a folder ships).
PROJECTORS_FILE = "media_projectors.safetensors"


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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """A folder on a pinned base is assembled (`assemble_on_pinned_base`); any other loads as transformers
        loads it."""
        folder = Path(str(pretrained_model_name_or_path))
        if (folder / PINNED_BASE_FILE).is_file():
            config = kwargs.get("config")
            dtype = kwargs.get("dtype") if isinstance(kwargs.get("dtype"), torch.dtype) else torch.float32
            return assemble_on_pinned_base(folder, dtype, config if isinstance(config, ReadingLMConfig) else None)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


def assemble_on_pinned_base(folder: Path, dtype: torch.dtype = torch.float32,
                            config: ReadingLMConfig | None = None,
                            base_weights: dict[str, torch.Tensor] | None = None) -> ReadingLMForCausalLM:
    """The model of a folder on a pinned base: the base's weights (checked, cached: PinnedBase.state_dict), the
    folder's projectors, and its LoRA merged in (peft), in `dtype`, in eval mode.

    `base_weights` stands in for the pinned base's (tests build tiny folders on tiny random bases)."""
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    config = config or ReadingLMConfig.from_pretrained(folder)
    weights = dict(base_weights if base_weights is not None else PinnedBase.read(folder / PINNED_BASE_FILE).state_dict())
    from safetensors import SafetensorError

    try:
        weights.update(load_file(str(folder / PROJECTORS_FILE)))
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelLoadError(f"{folder} names a pinned base but its {PROJECTORS_FILE} cannot be read: {err}") from err
    with no_init_weights():  # every weight is overwritten below; skip the random initialisation
        model = ReadingLMForCausalLM(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"{folder}: the base and the folder's parts do not fit this config: missing "
                             f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return model.to(dtype).eval()


def write_on_pinned_base(folder: Path, config: ReadingLMConfig, projectors: dict[str, torch.Tensor],
                         base: PinnedBase, adapter: Path | None = None) -> None:
    """Save a reading LM's own parts as a folder on `base`: its config, its projectors' state
    (`media_projectors.state_dict()`), and the peft LoRA saved in `adapter` (copied), never the base's weights."""
    import shutil

    from transformers import GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.architectures = [ReadingLMForCausalLM.__name__]
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    base.write(folder)
    save_file({f"media_projectors.{k}": v.detach().float().contiguous() for k, v in projectors.items()},
              str(folder / PROJECTORS_FILE))
    if adapter is not None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(adapter) / name, folder / name)


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
