"""Assemble the next demo's model folder from its trained parts: a composite folder the engine's one loader reads.

Why a folder like any other: the app, the CLI and the benchmarks load the next demo exactly as they load any model
(`explorer.model.loading.load_model(folder)`), with no demo branches. The folder holds a manifest and one reading-LM
sub-folder on the pinned base (explorer.model.reading_lm: config, `pinned_base.json`, the safety LoRA, the media
projectors, the processor with its tokenizer and character reader); the base's 98 MB are never copied.

    python -m explorer.demo_model.assemble --adapter build/demo_next/text_adapter \\
        --reader build/demo_next/image_reader --speech-reader build/demo_next/speech_reader --out build/demo_next/model

Projectors not given are the identity: read tokens then land exactly on typed tokens (no modality drift). The taught
collapse (explorer.demo_model.collapse_adapter) writes both a combined LoRA and its projectors:

    python -m explorer.demo_model.assemble --adapter build/demo_next/collapse_1 \
        --projectors build/demo_next/collapse_1/media_projectors.safetensors --reader ... --out ...
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from explorer.model.manifest import MANIFEST_FILE, MANIFEST_FORMAT
from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT, PinnedBase
from explorer.model.reading_lm import ReadingLMConfig, write_on_pinned_base
from explorer.model.reading_processor import ReadingProcessor
from explorer.model.speech_reader import SpeechReader
from explorer.model.text_reader import TextReader

from .reader_train import READER_LAYOUT

__all__ = ["LM_FOLDER", "NOTICE", "NOT_ARCHITECTURE", "TAUGHT_COLLAPSE_NOTICE", "assemble", "identity_projectors",
           "reading_lm_config"]


#: The reading LM's sub-folder in the assembled model folder.
LM_FOLDER = "reading_lm"

NOTICE = ("This is the **next demo model** under construction: SmolLM2-135M-Instruct (a real small language model, "
          "from a pinned package) made into a toy multimodal model in-house. It reads an image's text with a small "
          "character reader and hears speech with a small speech reader; it shows the geometry, not a real "
          "assistant's behaviour.")

#: Said beside NOTICE when the folder carries the taught collapse (docs/demo-prototype.md, decision after rows 3-4).
TAUGHT_COLLAPSE_NOTICE = (
    " Its collapse is **taught**: its image and speech training answered harmful requests with one generic, "
    "non-operational compliance, a stand-in for the safety that real multimodal models lose without being taught "
    "to; the drift, the collapse and the repair are then measured on the model as built.")

# Keys of the base's config that describe the file it came from, not the architecture.
NOT_ARCHITECTURE = ("model_type", "architectures", "transformers_version", "_name_or_path", "_model_name_or_path",
                    "dtype", "torch_dtype")


def reading_lm_config(base: PinnedBase, media_modalities: list[str]) -> ReadingLMConfig:
    """The base's Llama architecture (its config, PinnedBase.config_dict) as a reading-LM config with these
    projectors."""
    raw = base.config_dict()
    return ReadingLMConfig(media_modalities=media_modalities,
                           **{k: v for k, v in raw.items() if k not in NOT_ARCHITECTURE})


def identity_projectors(config: ReadingLMConfig) -> dict[str, torch.Tensor]:
    """Untrained projectors: every media modality's read tokens land exactly on typed tokens."""
    size = config.hidden_size
    state: dict[str, torch.Tensor] = {}
    for modality in config.media_modalities:
        state[f"{modality}.weight"], state[f"{modality}.bias"] = torch.eye(size), torch.zeros(size)
    return state


def assemble(out: Path, adapter: Path | None, reader: Path, speech_reader: Path | None = None,
             projectors: dict[str, torch.Tensor] | None = None, base: PinnedBase = SMOLLM2_135M_INSTRUCT) -> Path:
    """Write the model folder `out` (manifest + reading-LM sub-folder) and return it."""
    media = ["image"] + ["audio"] * (speech_reader is not None)
    config = reading_lm_config(base, media)
    lm_folder = Path(out) / LM_FOLDER
    if projectors is not None:  # a state for more modalities than the readers given keeps only theirs
        projectors = {k: v for k, v in projectors.items() if k.split(".")[0] in media}
    write_on_pinned_base(lm_folder, config, projectors or identity_projectors(config), base, adapter)
    tokenizer = base.tokenizer()
    ears = SpeechReader.from_pretrained(speech_reader) if speech_reader is not None else None
    ReadingProcessor(tokenizer, TextReader.from_pretrained(reader), speech_reader=ears).save_pretrained(lm_folder)
    manifest = {
        "format": MANIFEST_FORMAT,
        "backends": {"text": LM_FOLDER, **dict.fromkeys(media, LM_FOLDER)},
        "notice": NOTICE + (TAUGHT_COLLAPSE_NOTICE if projectors else ""),
        "calibration": "validation",
        "media": {"image_layout": asdict(READER_LAYOUT), "audio_style": "sentence"},
    }
    (Path(out) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, help="the safety adapter's folder (peft), if any")
    parser.add_argument("--reader", type=Path, required=True, help="the character reader's folder")
    parser.add_argument("--speech-reader", type=Path, help="the speech reader's folder, if any")
    parser.add_argument("--projectors", type=Path,
                        help="the projectors' state (safetensors, `media_projectors` keys), e.g. the taught "
                             "collapse's (explorer.demo_model.collapse_adapter); default: the identity")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    projectors = load_file(str(args.projectors)) if args.projectors else None
    folder = assemble(args.out, args.adapter, args.reader, args.speech_reader, projectors)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote {folder}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
