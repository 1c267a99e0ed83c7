"""One LoRA from several: the next demo's text safety adapter and its media adapter shipped as one peft folder.

Why: a model folder on a pinned base carries one LoRA (explorer.model.reading_lm merges it on loading), but the demo's
adapters are trained in stages: the text safety adapter (explorer.demo_model.safety_adapter) at a strength chosen
on development sets, then the media adapter (explorer.demo_model.collapse_adapter) on top of it. Two LoRAs on the
same modules add up exactly as one LoRA of the summed rank:

    s1·B1·A1 + s2·B2·A2 = [s1·B1 | s2·B2] · [A1 ; A2]

so the combined folder stores A stacked along the rank and B side by side with each part's scaling (its
lora_alpha / r times the strength it is shipped at) folded in, and sets lora_alpha = r (scaling 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "combine_loras", "lora_scaling"]


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_scaling(config: dict) -> float:
    """A plain LoRA's scaling (lora_alpha / r); a config this module cannot combine exactly is refused."""
    unsupported = [k for k in ("use_rslora", "use_dora") if config.get(k)]
    unsupported += [k for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    if unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"only plain LoRAs (no rslora, dora, rank or alpha patterns, bias 'none') can be combined; "
                         f"this one sets {unsupported or ['bias']}")
    return float(config["lora_alpha"]) / float(config["r"])


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = Path(folder)
    return json.loads((folder / ADAPTER_CONFIG).read_text()), load_file(str(folder / ADAPTER_WEIGHTS))


def combine_loras(parts: Sequence[tuple[Path, float]], out: Path) -> Path:
    """Write to `out` one LoRA equal to the sum of `parts` (folder, strength): each part's delta times its strength.

    Every part must adapt the same modules (same target modules and layers); the first part's config is kept
    otherwise."""
    if not parts:
        raise ValueError("combine_loras needs at least one LoRA")
    read = [(_read(folder), strength) for folder, strength in parts]
    first_config, first_weights = read[0][0]
    for (config, weights), _ in read[1:]:
        if set(weights) != set(first_weights):
            raise ValueError("the LoRAs adapt different modules; only LoRAs on the same modules can be combined")
        for key in ("target_modules", "layers_to_transform"):
            if sorted(config.get(key) or []) != sorted(first_config.get(key) or []):
                raise ValueError(f"the LoRAs differ in {key}: {config.get(key)} vs {first_config.get(key)}")
    combined: dict[str, torch.Tensor] = {}
    for key in first_weights:
        if ".lora_A." in key:
            combined[key] = torch.cat([weights[key] for (_, weights), _ in read], dim=0)
        elif ".lora_B." in key:
            combined[key] = torch.cat([weights[key] * (lora_scaling(config) * strength)
                                       for (config, weights), strength in read], dim=1)
        else:
            raise ValueError(f"unexpected tensor {key} in a LoRA file")
    rank = sum(int(config["r"]) for (config, _), _ in read)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in combined.items()}, str(out / ADAPTER_WEIGHTS))
    config = dict(first_config, r=rank, lora_alpha=rank)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
